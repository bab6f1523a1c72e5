// Command tcptrace streams every TCP state change on the host, live.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/tcptrace/tcptrace/internal/cli"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := cli.Run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(cli.ExitCode(err, os.Stderr))
}

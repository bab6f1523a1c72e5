// Command tcpstorm generates TCP load for tcptrace's benchmark (.ci/bench.sh):
// a storm of short loopback connections, or a crowd of processes leaking
// sockets in CLOSE_WAIT. It is a development tool: it needs root for its
// network namespaces and uses only raw socket system calls, so every
// connection makes exactly the state changes the benchmark counts.
package main

import (
	"fmt"
	"os"
)

const usage = `usage: tcpstorm COMMAND [flags]

commands:
  storm   short connections to a server it runs itself; prints the rate
  leak    processes holding sockets in CLOSE_WAIT, until SIGTERM
  floor   the least a tracer can be on tcptrace's hook, until SIGINT
  cwsum   sum the "count" of 'tcptrace closewait -o json' lines on stdin
  leaker  (internal) one leaking process, started by leak

Run 'tcpstorm COMMAND -h' for a command's flags.
`

func main() {
	if len(os.Args) < 2 {
		fmt.Fprint(os.Stderr, usage)
		os.Exit(2)
	}
	cmds := map[string]func([]string) error{
		"storm":  runStorm,
		"leak":   runLeak,
		"leaker": runLeaker,
		"cwsum":  runCWSum,
		"floor":  runFloor,
	}
	run, ok := cmds[os.Args[1]]
	if !ok {
		fmt.Fprint(os.Stderr, usage)
		os.Exit(2)
	}
	if err := run(os.Args[2:]); err != nil {
		fmt.Fprintf(os.Stderr, "tcpstorm %s: %v\n", os.Args[1], err)
		os.Exit(1)
	}
}

package main

import (
	"bufio"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"strconv"
	"strings"
)

// runCWSum reads `tcptrace closewait -o json` lines on stdin and prints the
// sum of their top-level "count" (the nested peer and port counts are not
// summed) and how many processes matched: "sum=100000 procs=6". With -pids,
// only those processes count.
func runCWSum(args []string) error {
	fs := flag.NewFlagSet("tcpstorm cwsum", flag.ExitOnError)
	pidList := fs.String("pids", "", "comma-separated PIDs to count (default: all)")
	fs.Parse(args)
	want := map[uint32]bool{}
	for _, p := range strings.Split(*pidList, ",") {
		if p = strings.TrimSpace(p); p == "" {
			continue
		}
		n, err := strconv.ParseUint(p, 10, 32)
		if err != nil {
			return fmt.Errorf("bad pid %q", p)
		}
		want[uint32(n)] = true
	}
	sc := bufio.NewScanner(os.Stdin)
	sc.Buffer(nil, 256<<20) // one line holds every socket of a process
	sum, procs := 0, 0
	for sc.Scan() {
		var rec struct {
			Type  string `json:"type"`
			PID   uint32 `json:"pid"`
			Count int    `json:"count"`
		}
		if err := json.Unmarshal(sc.Bytes(), &rec); err != nil {
			return fmt.Errorf("bad JSON line: %w", err)
		}
		if rec.Type == "close_wait" && (len(want) == 0 || want[rec.PID]) {
			sum += rec.Count
			procs++
		}
	}
	if err := sc.Err(); err != nil {
		return err
	}
	fmt.Printf("sum=%d procs=%d\n", sum, procs)
	return nil
}

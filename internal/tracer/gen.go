package tracer

// The BPF objects are generated and committed, so building tcptrace needs no
// clang. `make generate` runs this; `make check-generate` fails when stale.
//go:generate go tool bpf2go -cc clang -cflags "-O2 -g -Wall -Werror" -target amd64,arm64 -type record_type -type event_flag -type sock_fd -type drop -type listener -type drop_kind -type state_nest tcptrace ../../bpf/tcptrace.c -- -I../../bpf

package tracer

import (
	"strings"

	"github.com/cilium/ebpf/btf"
)

// dropReasons names the running kernel's enum skb_drop_reason. The numbers
// differ between kernels, so they come from its BTF, never from a table.
type dropReasons struct {
	names          map[uint32]string // lower case, without SKB_DROP_REASON_
	listenOverflow uint32            // SKB_DROP_REASON_TCP_LISTEN_OVERFLOW, 0 if absent
	notSpecified   uint32            // SKB_DROP_REASON_NOT_SPECIFIED
	queuePurge     uint32            // SKB_DROP_REASON_QUEUE_PURGE, 0 if absent
}

func loadDropReasons(spec *btf.Spec) *dropReasons {
	r := &dropReasons{names: map[uint32]string{}}
	var e *btf.Enum
	if spec == nil || spec.TypeByName("skb_drop_reason", &e) != nil {
		return r
	}
	for _, v := range e.Values {
		name := strings.ToLower(strings.TrimPrefix(v.Name, "SKB_DROP_REASON_"))
		r.names[uint32(v.Value)] = name
		switch name {
		case "tcp_listen_overflow":
			r.listenOverflow = uint32(v.Value)
		case "not_specified":
			r.notSpecified = uint32(v.Value)
		case "queue_purge":
			r.queuePurge = uint32(v.Value)
		}
	}
	return r
}

func (r *dropReasons) name(v uint32) string {
	if n, ok := r.names[v]; ok {
		return n
	}
	return "unknown"
}

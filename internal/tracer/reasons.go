package tracer

import (
	"strings"

	"github.com/cilium/ebpf/btf"
)

// kernelReasons names the running kernel's enum skb_drop_reason and enum
// sk_rst_reason. The numbers differ between kernels, so they come from its
// BTF, never from a table.
type kernelReasons struct {
	names          map[uint32]string // lower case, without SKB_DROP_REASON_
	listenOverflow uint32            // SKB_DROP_REASON_TCP_LISTEN_OVERFLOW, 0 if absent
	notSpecified   uint32            // SKB_DROP_REASON_NOT_SPECIFIED
	queuePurge     uint32            // SKB_DROP_REASON_QUEUE_PURGE, 0 if absent
	resets         map[uint32]string // lower case, without SK_RST_REASON_ (6.10+)
}

func loadKernelReasons(spec *btf.Spec) *kernelReasons {
	r := &kernelReasons{names: enumNames(spec, "skb_drop_reason", "SKB_DROP_REASON_"),
		resets: enumNames(spec, "sk_rst_reason", "SK_RST_REASON_")}
	for v, name := range r.names {
		switch name {
		case "tcp_listen_overflow":
			r.listenOverflow = v
		case "not_specified":
			r.notSpecified = v
		case "queue_purge":
			r.queuePurge = v
		}
	}
	return r
}

// enumNames maps the values of the kernel's enum to its names, in lower case
// and without prefix; empty when the kernel has no such enum.
func enumNames(spec *btf.Spec, enum, prefix string) map[uint32]string {
	names := map[uint32]string{}
	var e *btf.Enum
	if spec == nil || spec.TypeByName(enum, &e) != nil {
		return names
	}
	for _, v := range e.Values {
		names[uint32(v.Value)] = strings.ToLower(strings.TrimPrefix(v.Name, prefix))
	}
	return names
}

// resetName names a reset's reason: "" when the kernel gave none.
func (r *kernelReasons) resetName(v uint32) string {
	if v == resetReasonNone {
		return ""
	}
	if n, ok := r.resets[v]; ok {
		return n
	}
	return "unknown"
}

func (r *kernelReasons) name(v uint32) string {
	if n, ok := r.names[v]; ok {
		return n
	}
	return "unknown"
}

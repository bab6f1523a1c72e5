#!/usr/bin/env bash
# Shows that a failure inside a vmtest guest fails the matrix, readably: one
# kernel runs one drop test with a drop hook forced that it lacks (6.1 has
# no tp_btf one: consume_skb says its caller from 6.3, kfree_skb names
# TCP_LISTEN_OVERFLOW from 6.15). vmtest must exit non-zero and print
# tcptrace's one-line reason from the guest's console.
set -uo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
want="no hook for dropped clients could be attached"

out=$(VMTEST_KERNELS=${VMTEST_SELFCHECK_KERNEL:-6.1} VMTEST_RUN='^TestDropsSynQueueFull$' \
	VMTEST_DROP_HOOKS=kprobe,tp_btf "$here/vmtest.sh" 2>&1)
rc=$?
if [ "$rc" = 0 ]; then
	printf '%s\n' "$out" | tail -n 30
	echo "vmtest-selfcheck: FAIL: vmtest passed with a hook the kernel lacks forced"
	exit 1
fi
if ! grep -q "$want" <<<"$out"; then
	printf '%s\n' "$out" | tail -n 60
	echo "vmtest-selfcheck: FAIL: vmtest failed (exit $rc) without saying \"$want\""
	exit 1
fi
grep -m1 -o "tcptrace: $want.*" <<<"$out"
grep -A3 '^kernel ' <<<"$out"
echo "vmtest-selfcheck: ok: the forced hook failed the matrix (exit $rc) with the reason above"

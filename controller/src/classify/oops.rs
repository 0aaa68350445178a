//! The oops table: the header strings that start a crash report, and per header the
//! title formats (a regex over the report's first lines, a title template, how to
//! find the title's stack frame). Modelled on syzkaller's `linuxOopses`.

use std::sync::LazyLock;

use super::formats::*;
use super::pick::Extractor;

/// KMSAN: uninitialised data flows through copy and crypto engines that process
/// the caller's buffers; the caller that handed them the data is the frame.
const KMSAN_SKIP: &[&str] = &[
    "alloc_skb",
    "netlink_ack",
    "netlink_rcv_skb",
    "instrument_",
    "copy_to_user",
    "copyout",
    "crypto_",
    "cipher_",
    "xts_",
    "drbg_",
    "rng_",
    "aes",
    "sha",
    "_encrypt",
    "_decrypt",
];

/// The header table, in priority order.
pub(crate) static OOPSES: LazyLock<Vec<Oops>> = LazyLock::new(|| {
    let kasan_skip: &'static [&'static str] = &["slab_", "kfree", "vunmap", "vfree"];
    vec![
        Oops {
            header: "BUG:",
            formats: vec![
                // The access line follows the header within a few lines; one found further
                // down belongs to a later report.
                f(r"BUG: KASAN: ([a-z\-]+) in {{FUNC}}(?:.*\n){1,4}?.*(Read|Write) (?:of size|at addr) (?:[0-9a-f]+)", "KASAN: {1} {3} in {F}")
                    .alt(&["bad-access in {F}"])
                    .stack(StackFmt {
                        parts: parts(&[r"BUG: KASAN: (?:[a-z\-]+) in {{FUNC}}", CALL_TRACE, "PARSE"]),
                        parts2: parts(&[CALL_TRACE, "PARSE"]),
                        skip: kasan_skip,
                        extractor: Extractor::First,
                        named_fallback: false,
                    }),
                f(r"BUG: KASAN: ([a-z\-]+) on address(?:.*\n)+?.*(Read|Write) of size ([0-9]+)",
                    "KASAN: {1} {2}")
                    // The report carries a trace: one cut before it is corrupted.
                    .stack(call_trace(&[])),
                f(r"BUG: KASAN: double-free or invalid-free in {{FUNC}}", "KASAN: invalid-free in {F}")
                    .alt(&["bad-access in {F}"])
                    .stack(StackFmt {
                        parts: parts(&[r"BUG: KASAN: double-free or invalid-free in {{FUNC}}", CALL_TRACE, "PARSE"]),
                        parts2: Vec::new(),
                        skip: kasan_skip,
                        extractor: Extractor::First,
                        named_fallback: false,
                    }),
                // Old KASAN headers that end `at addr X` and lack the access line are
                // titled by the header itself (the corrupted format below).
                f(r"BUG: KASAN: ([a-z\-]+) in {{FUNC}}\S*\s*$", "KASAN: {1} in {F}")
                    .alt(&["bad-access in {F}"])
                    .stack(StackFmt {
                        parts: parts(&[r"BUG: KASAN: (?:[a-z\-]+) in {{FUNC}}", CALL_TRACE, "PARSE"]),
                        parts2: parts(&[CALL_TRACE, "PARSE"]),
                        skip: kasan_skip,
                        extractor: Extractor::First,
                        named_fallback: false,
                    }),
                f(r"BUG: KASAN: ([^\n]*)", "KASAN: {1}").no_stack().corrupted(),
                f(r"BUG: KMSAN: ([a-z\-]+) in {{FUNC}}", "KMSAN: {1} in {F}")
                    .alt(&["bad-access in {F}"])
                    .stack(StackFmt {
                        parts: parts(&[r"BUG: KMSAN: (?:[a-z\-]+) in {{FUNC}}", "PARSE"]),
                        parts2: parts(&[CALL_TRACE, "PARSE"]),
                        skip: KMSAN_SKIP,
                        extractor: Extractor::First,
                        named_fallback: false,
                    }),
                f(r"BUG: KMSAN: ([a-z\-]+)", "KMSAN: {1} in {F}")
                    .stack(call_trace(KMSAN_SKIP)),
                f(r"BUG: KCSAN: ([a-z\-]+) in ([A-Za-z0-9_]+)(?:\.[a-z0-9.]+)?(?:\+0x[0-9a-f]+/0x[0-9a-f]+)? / ([A-Za-z0-9_]+)", "KCSAN: {1} in {2} / {3}").no_stack(),
                f(r"BUG: KCSAN: ([a-z\-:]+(?: [a-z\-:]+)*?) in {{FUNC}}", "KCSAN: {1} in {F}")
                    .stack(stack(&[r"BUG: KCSAN: [^\n]* in {{FUNC}}", "PARSE"], &["kcsan"])),
                f(r"BUG: KFENCE: ([a-z\- ]+?) in {{FUNC}}", "KFENCE: {1} in {F}")
                    .alt(&["bad-access in {F}"])
                    .stack(stack(&[r"BUG: KFENCE: [a-z\- ]+ in {{FUNC}}", "PARSE"], &["kfence"])),
                f(r"BUG: (?:unable to handle kernel|kernel) NULL pointer dereference", "BUG: unable to handle kernel NULL pointer dereference in {F}")
                    .alt(&["bad-access in {F}"])
                    .stack(rip_stack(&[])),
                f(r"BUG: (?:unable to handle kernel paging request|unable to handle page fault for address|Unable to handle kernel paging request)", "BUG: unable to handle kernel paging request in {F}")
                    .alt(&["bad-access in {F}"])
                    .stack(rip_stack(&[])),
                f(r"BUG: (?:unable to handle kernel access to user memory|kernel access to user memory)", "BUG: unable to handle kernel access to user memory in {F}")
                    .alt(&["bad-access in {F}"])
                    .stack(rip_stack(&[])),
                f(r"BUG: Unable to handle kernel (?:data access|instruction fetch)", "BUG: unable to handle kernel paging request in {F}")
                    .alt(&["bad-access in {F}"])
                    .stack(rip_stack(&[])),
                f(r"BUG: unable to handle kernel", "BUG: unable to handle kernel").no_stack().corrupted(),
                f(r"BUG: spinlock (lockup suspected|already unlocked|recursion|bad magic|wrong owner|wrong CPU|trylock failure on UP|cpu recursion)", "BUG: spinlock {1} in {F}")
                    .stack(call_trace(&["spin_", "_raw_", "do_raw_"])),
                f(r"BUG: soft lockup", "BUG: soft lockup in {F}")
                    .alt(&["stall in {F}"])
                    .stack(StackFmt { parts: parts(&[RIP, "PARSE"]), ..stall_stack(CALL_TRACE) }),
                f(r"BUG: workqueue lockup", "BUG: workqueue lockup").no_stack(),
                f(r"BUG: sleeping function called from invalid context", "BUG: sleeping function called from invalid context in {F}")
                    .stack(call_trace(&["might_sleep", "__might_", "sleep"])),
                f(r"BUG: using __this_cpu_([a-z_]+)\(\) in preemptible", "BUG: using __this_cpu_{1}() in preemptible code in {F}")
                    .stack(call_trace(&["dump_stack", "preemption", "preempt", "debug_", "processor_id", "this_cpu"])),
                f(r"BUG: using smp_processor_id\(\) in preemptible", "BUG: using smp_processor_id() in preemptible code in {F}")
                    .stack(call_trace(&["dump_stack", "preemption", "preempt", "debug_", "processor_id"])),
                f(r"BUG: scheduling while atomic", "BUG: scheduling while atomic in {F}")
                    .stack(call_trace(&["schedule", "__schedule_bug", "dequeue"])),
                f(r"BUG: bad unlock balance detected!", "BUG: bad unlock balance in {F}")
                    .stack(StackFmt {
                        parts2: parts(&[CALL_TRACE, "PARSE"]),
                        ..stack(&["is trying to release lock", "PARSE"], &["unlock", "release"])
                    }),
                f(r"BUG: held lock freed!", "BUG: held lock freed in {F}")
                    .stack(stack(&[r"at: (?:{{PC}} +)?{{FUNC}}", CALL_TRACE, "PARSE"], &["debug_check_no_locks", "free", "slab", "kmem", "freezer", "try_to_freeze", "get_signal", "do_signal", "exit_to_user"])),
                f(r"BUG: lock held when returning to user space", "BUG: lock held when returning to user space in {F}")
                    .no_stack()
                    .stack(stack(&["lock held when returning to user space", "at: (?:{{PC}} +)?{{FUNC}}"], &[])),
                f(r"BUG: workqueue leaked lock or atomic", "BUG: workqueue leaked lock or atomic in {F}")
                    .no_stack()
                    .stack(stack(&["last function: ([A-Za-z0-9_]+)"], &[])),
                f(r"BUG: Dentry [^\n]* still in use \([0-9]+\) \[(unmount) of ", "BUG: Dentry still in use in {1}")
                    .no_stack(),
                f(r"BUG: Bad page (state|map|cache)", "BUG: Bad page {1} in {F}")
                    .stack(call_trace(&["bad_page", "free_", "page", "folio", "zap_", "unmap_", "release_pages", "skb_", "kfree_skb", "page_pool", "napi_", "netif_receive"])),
                f(r"BUG: (?:[A-Z]+ )?stack guard page was hit", "BUG: stack guard page was hit in {F}")
                    .alt(&["stack-overflow in {F}"])
                    .stack(overflow_stack()),
                f(r"BUG: memory leak", "memory leak in {F}")
                    .stack(stack(&[r"backtrace(?: \(crc [0-9a-f]+\))?:", "PARSE"], &["kmemleak", "mmap_region", "kmalloc", "kzalloc", "kcalloc", "alloc", "create_object", "slab", "kmem_cache", "__do_kmalloc", "krealloc", "memdup", "strdup", "strndup", "sock_kmalloc", "kobject_set_name", "idr_get", "list_lru_init", "kasprintf", "kvasprintf", "pcpu_create_chunk"])),
                f(r"BUG: corrupted list in {{FUNC}}", "BUG: corrupted list in {F}")
                    .stack(stack(&[r"BUG: corrupted list in {{FUNC}}", CALL_TRACE, "PARSE"], &["list_"])),
                f(r"BUG: (MAX_[A-Z_]+ too low!)", "BUG: {1}").no_stack(),
                // Lockdep's wait-context check; syzkaller files it with the other lockdep
                // self-checks as a locking bug.
                f(r"BUG: Invalid wait context", "WARNING: locking bug in {F}")
                    .stack(call_trace(&["lock", "schedule", "might_sleep"])),
                f(r"BUG: rwlock (lockup suspected|already unlocked|recursion|bad magic|wrong owner|wrong CPU)", "BUG: rwlock {1} in {F}")
                    .stack(call_trace(&["_lock", "_unlock", "_raw_"])),
                f(r"BUG: (non-zero (?:nr_ptes|pgtables_bytes|nr_pmds) on freeing mm)", "BUG: {1}").no_stack(),
                f(r"BUG: (Bad rss-counter state)", "BUG: {1}").no_stack(),
                f(r"BUG: ([a-zA-Z0-9_]+ [^\n]*?) in {{FUNC}}", "BUG: {1} in {F}")
                    .stack(stack(&[r"BUG: [^\n]* in {{FUNC}}", CALL_TRACE, "PARSE"], &[])),
            ],
            suppressions: vec![
                re(r"BUG: see /proc"),
                re(r"BUG: Out of memory\. ODEBUG disabled"),
                // Kernel BUG messages name the bug right after the colon.
                re(r"BUG:\s*[^A-Za-z\s]|BUG:\s{2,}"),
                re(r"\bBUG: Unable to read"),
            ],
        },
        Oops {
            header: "WARNING:",
            formats: {
                let mut v = vec![
                    // Timer objects are checked from the timer core and freed in their own
                    // callbacks: the timer machinery is the object's, not the culprit.
                    f(r"WARNING: .*lib/debugobjects\.c", "WARNING: ODEBUG bug in {F}")
                        .stack(warning_stack(&["debug_", "kfree", "slab", "free_", "timer"])),
                    f(r"WARNING: .*mm/usercopy\.c.* usercopy_warn", "WARNING: bad usercopy in {F}")
                        .stack(warning_stack(&["usercopy", "__check", "check_"])),
                    f(r"WARNING: .*lib/kobject\.c", "WARNING: kobject bug in {F}")
                        .stack(warning_stack(&["kobject_"])),
                    f(r"WARNING: .*fs/proc/generic\.c.* proc_register", "WARNING: proc registration bug in {F}")
                        .stack(warning_stack(&["proc_"])),
                    f(r"WARNING: .*lib/refcount\.c", "WARNING: refcount bug in {F}")
                        .stack(warning_stack(&["refcount", "kobject_"])),
                    f(r"WARNING: .*refcount_t: ", "WARNING: refcount bug in {F}")
                        .stack(warning_stack(&["refcount", "kobject_"])),
                    f(r"WARNING: .*kernel/locking/lockdep\.c.*lock_", "WARNING: locking bug in {F}")
                        .stack(warning_stack(&["lock_sock", "release_sock", "lock_sync", "lock_class", "__lock_", "lock_acquire", "lock_release", "register_lock_class", "reacquire_held_locks", "validate_chain", "check_noncircular", "check_prev_add", "mark_lock", "mark_usage", "hlock_class", "look_up_lock_class"])),
                    f(r"WARNING: .*mm/(?:slab_common\.c.* kmalloc_slab|util\.c.* kvmalloc)", "WARNING: kmalloc bug in {F}")
                        .stack(warning_stack(&["kmalloc", "krealloc", "slab", "kmem", "kvmalloc", "kmemdup", "kcalloc", "kzalloc", "vmalloc", "kvzalloc", "kvcalloc"])),
                    f(r"WARNING: .*mm/vmalloc\.c.*__vmalloc_node", "WARNING: zero-size vmalloc in {F}")
                        .stack(warning_stack(&["vmalloc", "vzalloc", "kvmalloc", "kvzalloc", "kvcalloc"])),
                    f(r"WARNING: kernel stack regs at [0-9a-f]+ in [^ ]* has bad '([^']+)' value", "WARNING: kernel stack regs has bad '{1}' value").no_stack(),
                    f(r"WARNING: kernel stack regs at [^\n]* has bad ", "WARNING: kernel stack regs has bad value").no_stack(),
                    f(r"WARNING: kernel stack frame pointer at [0-9a-f]+ in [^ ]* has bad value", "WARNING: kernel stack frame pointer has bad value").no_stack(),
                    f(r"WARNING: bad unlock balance detected!", "WARNING: bad unlock balance in {F}")
                        .stack(StackFmt {
                        parts2: parts(&[CALL_TRACE, "PARSE"]),
                        ..stack(&["is trying to release lock", "PARSE"], &["unlock", "release"])
                    }),
                    f(r"WARNING: held lock freed!", "WARNING: held lock freed in {F}")
                        .stack(stack(&[r"at: (?:{{PC}} +)?{{FUNC}}", CALL_TRACE, "PARSE"], &["debug_check_no_locks", "free", "slab", "kmem", "freezer", "try_to_freeze", "get_signal", "do_signal", "exit_to_user"])),
                    f(r"WARNING: (?i:nested) lock was not taken", "WARNING: nested lock was not taken in {F}")
                        .stack(call_trace(&[])),
                    f(r"WARNING: lock held when returning to user space", "WARNING: lock held when returning to user space in {F}")
                        .no_stack()
                        .stack(stack(&["lock held when returning to user space", "at: (?:{{PC}} +)?{{FUNC}}"], &[])),
                    f(r"WARNING: [^\n]*still has locks held!", "WARNING: still has locks held in {F}")
                        .stack(stack(&[r"^\s*#0: [^\n]*at: (?:{{PC}} +)?{{FUNC}}", CALL_TRACE, "PARSE"], &["debug_check_no_locks", "free", "slab", "kmem", "freezer", "try_to_freeze", "get_signal", "do_signal", "exit_to_user"])),
                ];
                v.extend(lockdep_formats("WARNING"));
                v.push(
                    f(r"WARNING: .* at drivers/usb/core/urb\.c:[0-9]+ usb_submit_urb", "WARNING in {F}/usb_submit_urb")
                        .stack(warning_stack(&["usb_submit_urb", "usb_start_wait_urb", "usb_bulk_msg", "usb_interrupt_msg", "usb_control_msg"])),
                );
                v.extend([
                    f(r"WARNING: .* at {{SRC}} {{FUNC}}", "WARNING in {F}")
                        .stack(warning_stack(&[])),
                    f(r"WARNING: .*at {{SRC}}", "WARNING in {F}")
                        .stack(warning_stack(&[])),
                    f(r"WARNING: .* at {{FUNC}}", "WARNING in {F}")
                        .stack(warning_stack(&[])),
                    f(r"WARNING: {{SRC}} at ", "WARNING in {F}").stack(warning_stack(&[])),
                    f(r"WARNING: CPU: [0-9]+ PID: [0-9]+ at", "WARNING in {F}")
                        .stack(warning_stack(&[])),
                ]);
                v
            },
            suppressions: vec![
                re(r"WARNING: /etc/ssh/moduli does not exist"),
                re(r"WARNING: workqueue cpumask: online intersect > possible intersect"),
                re(r"WARNING: [Tt]he mand mount option"),
                re(r"WARNING: Unsupported flag value"),
                re(r"WARNING: Unprivileged eBPF is enabled"),
                re(r"WARNING: fbcon: Driver"),
                re(r"WARNING: See https.* for mitigation options"),
                re(r"WARNING: kernel not compiled with CPU_SRSO"),
                re(r"EXT4-[Ff][Ss](?: \(.*\))?:"),
                re(r"(?i)warning: .* uses (?:deprecated v2 capabilities|wireless extensions)"),
                re(r"XFS \(\w+\): WARNING"),
                // Subsystem notices (`RETBleed: WARNING: ...`); kernel WARNINGs
                // start the message.
                re(r"^[A-Za-z0-9_ ]+: WARNING: "),
                re(r"WARNING: CPU: [0-9]+ PID: [0-9]+ at [^ ]*net/wireless"),
            ],
        },
        Oops {
            header: "INFO:",
            formats: {
                let mut v = lockdep_formats("INFO");
                v.extend([
                    f(r"INFO: rcu_\w+ (?:self-)?detected(?: expedited)? stall", "INFO: rcu detected stall in {F}")
                        .alt(&["stall in {F}"])
                        .stack(stall_stack(STALL_IRQ)),
                    f(r"INFO: rcu detected stall", "INFO: rcu detected stall in {F}")
                        .alt(&["stall in {F}"])
                        .stack(stall_stack(STALL_IRQ)),
                    f(r"INFO: task [^\n]* blocked for more than [0-9]+ seconds", "INFO: task hung in {F}")
                        .alt(&["hang in {F}"])
                        .stack(StackFmt { extractor: Extractor::Hung, ..call_trace(&[]) }),
                    f(r"INFO: task [^\n]* can't die for more than [0-9]+ seconds", "INFO: task can't die in {F}")
                        .stack(StackFmt { extractor: Extractor::Hung, ..call_trace(&[]) }),
                    f(r"INFO: trying to register non-static key", "INFO: trying to register non-static key in {F}")
                        .stack(call_trace(&["stack", "lock", "IRQ", "register_lock_class"])),
                    f(r"INFO: rcu_(?:preempt|sched|bh) detected stalls", "INFO: rcu detected stall in {F}")
                        .alt(&["stall in {F}"])
                        .stack(stall_stack(CALL_TRACE)),
                ]);
                v
            },
            suppressions: vec![
                re(r"INFO: lockdep is turned off"),
                re(r"INFO: Stall ended before state dump start"),
                re(r"INFO: NMI handler"),
                re(r"perf: interrupt took too long"),
                re(r"_INFO:"),
                re(r"INFO: Object 0x"),
                re(r"INFO: Slab 0x"),
                re(r"INFO: recovery required on readonly filesystem"),
                re(r"(?:ext4|EXT4|F2FS|f2fs|XFS|xfs|btrfs|BTRFS)[^\n]*INFO:"),
                re(r"INFO: Detected [^\n]* hung"),
            ],
        },
        Oops {
            header: "Unable to handle kernel",
            formats: vec![
                f(r"Unable to handle kernel paging request", "BUG: unable to handle kernel paging request in {F}")
                    .alt(&["bad-access in {F}"])
                    .stack(rip_stack(&[])),
                f(r"Unable to handle kernel NULL pointer dereference", "BUG: unable to handle kernel NULL pointer dereference in {F}")
                    .alt(&["bad-access in {F}"])
                    .stack(rip_stack(&[])),
                f(r"Unable to handle kernel access to user memory", "BUG: unable to handle kernel access to user memory in {F}")
                    .alt(&["bad-access in {F}"])
                    .stack(rip_stack(&[])),
                f(r"Unable to handle kernel (paging request|NULL pointer dereference|[a-z ]+)", "BUG: unable to handle kernel {1} in {F}")
                    .alt(&["bad-access in {F}"])
                    .stack(rip_stack(&[])),
            ],
            suppressions: Vec::new(),
        },
        Oops {
            header: "general protection fault",
            formats: vec![
                f(r"general protection fault", "general protection fault in {F}")
                    .alt(&["bad-access in {F}"])
                    .stack(rip_stack(&[])),
            ],
            // User-space segfaults (`traps: prog[1] general protection fault ... in lib.so[..]`).
            suppressions: vec![re(r"general protection fault[^\n]*\bin\b [^\n]*\[[0-9a-f]+\+[0-9a-f]+\]")],
        },
        Oops {
            header: "stack segment: ",
            formats: vec![f(r"stack segment: ", "stack segment fault in {F}")
                .alt(&["bad-access in {F}"])
                .stack(rip_stack(&[]))],
            suppressions: Vec::new(),
        },
        Oops {
            header: "Kernel panic",
            formats: kernel_panic_formats(),
            suppressions: Vec::new(),
        },
        Oops {
            header: "PANIC: double fault",
            formats: vec![f(r"PANIC: double fault", "PANIC: double fault in {F}")
                .stack(rip_stack(&[]))],
            suppressions: Vec::new(),
        },
        Oops {
            header: "kernel BUG",
            formats: vec![
                f(r"kernel BUG at mm/usercopy\.c", "BUG: bad usercopy in {F}")
                    .stack(rip_stack(&["usercopy", "__check", "check_"])),
                f(r"kernel BUG at lib/list_debug\.c", "BUG: corrupted list in {F}")
                    .stack(rip_stack(&["list_"])),
                f(r"kernel BUG", "kernel BUG in {F}")
                    .stack(rip_stack(&[])),
            ],
            suppressions: Vec::new(),
        },
        Oops {
            header: "Kernel BUG",
            formats: vec![f(r"Kernel BUG", "kernel BUG in {F}").stack(rip_stack(&[]))],
            suppressions: Vec::new(),
        },
        Oops {
            header: "BUG kmalloc-",
            formats: vec![f(r"BUG kmalloc-[0-9]+ \([^)]*\): ([^\n]*?)\s*$", "BUG: {1}").no_stack().corrupted()],
            suppressions: Vec::new(),
        },
        Oops {
            header: "Watchdog detected hard LOCKUP",
            formats: vec![f(r"Watchdog detected hard LOCKUP", "BUG: hard lockup in {F}")
                .alt(&["stall in {F}"])
                .stack(StackFmt { parts: parts(&[RIP, "PARSE"]), ..stall_stack(CALL_TRACE) })],
            suppressions: Vec::new(),
        },
        Oops {
            // kmemleak's own dmesg summary (the details are in debugfs).
            header: "kmemleak: ",
            formats: vec![f(r"kmemleak: [0-9]+ new suspected memory leaks", "memory leak: new suspected leaks reported by kmemleak").no_stack()],
            // Other kmemleak messages (start-up, scan thread) are not leaks.
            suppressions: vec![re(r"kmemleak: [^0-9]")],
        },
        Oops {
            header: "Booting the kernel.",
            formats: vec![f(r"Booting the kernel\.", "unexpected kernel reboot").no_stack()],
            // A reboot prints this line on its own; elsewhere it is console garbage.
            suppressions: vec![re(r"\S[^\n]*Booting the kernel\.")],
        },
        Oops {
            header: "divide_error:",
            formats: vec![f(r"divide_error: ", "divide error in {F}").stack(rip_stack(&[]))],
            suppressions: Vec::new(),
        },
        Oops {
            header: "divide error:",
            formats: vec![f(r"divide error: ", "divide error in {F}").stack(rip_stack(&[]))],
            suppressions: Vec::new(),
        },
        Oops {
            header: "invalid opcode:",
            formats: vec![f(r"invalid opcode: ", "invalid opcode in {F}").stack(rip_stack(&[]))],
            suppressions: Vec::new(),
        },
        Oops {
            header: "UBSAN:",
            formats: vec![
                f(r"UBSAN: Undefined behaviour in", "UBSAN: undefined-behaviour in {F}")
                    .stack(call_trace(&["ubsan", "overflow"])),
                f(r"UBSAN: ([a-z\-]+) in", "UBSAN: {1} in {F}")
                    .stack(call_trace(&["ubsan", "overflow"])),
            ],
            suppressions: Vec::new(),
        },
        Oops {
            header: "unregister_netdevice: waiting for",
            formats: vec![f(r"unregister_netdevice: waiting for (?:[^ ]+) to become free", "unregister_netdevice: waiting for DEV to become free").no_stack()],
            suppressions: Vec::new(),
        },
        Oops {
            header: "Internal error:",
            formats: vec![f(r"Internal error:", "Internal error in {F}").stack(rip_stack(&[]))],
            suppressions: Vec::new(),
        },
        Oops {
            header: "Unhandled fault:",
            formats: vec![f(r"Unhandled fault:", "Unhandled fault in {F}").stack(rip_stack(&[]))],
            suppressions: Vec::new(),
        },
        Oops {
            header: "Alignment trap:",
            formats: vec![f(r"Alignment trap:", "Alignment trap in {F}").stack(rip_stack(&[]))],
            suppressions: Vec::new(),
        },
        Oops {
            header: "VFS: Close: file count is",
            formats: vec![f(r"VFS: Close: file count is", "VFS: Close: file count is zero (use-after-free)").no_stack()],
            suppressions: Vec::new(),
        },
        Oops {
            header: "VFS: Busy inodes after unmount",
            formats: vec![f(r"VFS: Busy inodes after unmount", "VFS: Busy inodes after unmount (use-after-free)").no_stack()],
            suppressions: Vec::new(),
        },
        Oops {
            // The Trusty TEE's panics, relayed to the kernel log line by line; a
            // relayed line can be cut by the next one (`panic (caller [ 1.2] trusty:
            // 0x..)`), so the caller address may follow a second prefix.
            header: "trusty: panic",
            formats: vec![
                f(r"trusty: panic \(caller (?:\[[ 0-9.]+\] trusty: )?0x[0-9a-f]+\): (?:DEBUG )?ASSERT FAILED at \([^)\n]*\):\s*$", "trusty: ASSERT FAILED:")
                    .no_stack()
                    .corrupted(),
                f(r"trusty: panic \(caller (?:\[[ 0-9.]+\] trusty: )?0x[0-9a-f]+\): (?:DEBUG )?ASSERT FAILED at \([^)\n]*\): ([^\n]*?)\s*$", "trusty: ASSERT FAILED: {1}")
                    .no_stack(),
                f(r"trusty: panic \(caller (?:\[[ 0-9.]+\] trusty: )?0x[0-9a-f]+\): ([^\n]*?)\s*$", "trusty: panic: {1}")
                    .no_stack(),
            ],
            suppressions: Vec::new(),
        },
        Oops {
            header: "SYZFAIL:",
            formats: vec![f(r"SYZFAIL: ([^\n]*?)\s*$", "SYZFAIL: {1}").no_stack()],
            suppressions: Vec::new(),
        },
        Oops {
            header: "SYZFATAL:",
            formats: vec![f(r"SYZFATAL: ([^\n]*?)\s*$", "SYZFATAL: {1}").no_stack()],
            suppressions: Vec::new(),
        },
    ]
});

/// Where a header was found in a line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct HeaderHit {
    /// Index into [`OOPSES`].
    pub oops: usize,
    /// Byte offset of the header in the line text.
    pub offset: usize,
}

/// The crash header in `text`, if the line starts a crash report.
pub(crate) fn match_header(text: &str) -> Option<HeaderHit> {
    let mut best: Option<HeaderHit> = None;
    for (i, o) in OOPSES.iter().enumerate() {
        // Short headers must start a word (`ODEBUG:` is not `BUG:`); long ones are
        // distinctive enough to be found glued to a previous message.
        let Some(pos) = text.match_indices(o.header).map(|(i, _)| i).find(|&i| {
            i == 0 || o.header.len() > 12 || !text.as_bytes()[i - 1].is_ascii_alphanumeric()
        }) else {
            continue;
        };
        if o.suppressions.iter().any(|s| s.is_match(text)) {
            continue;
        }
        if best.is_none_or(|b| pos < b.offset) {
            best = Some(HeaderHit {
                oops: i,
                offset: pos,
            });
        }
    }
    best
}

/// All header strings, for the prefilter.
pub(crate) fn header_strings() -> Vec<&'static str> {
    OOPSES.iter().map(|o| o.header).collect()
}

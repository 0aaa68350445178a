//! Stack frames: recognising frame lines in the kernel's several trace formats, the
//! skip-list of generic infrastructure frames, and picking the frame a title names.

use std::sync::LazyLock;

use regex::{Regex, RegexSet};

/// Function-name pattern: C identifiers, plus Rust paths like `<a::B>::f`.
pub(crate) const FUNC: &str =
    r"(<[^>\s]+>(?:::[A-Za-z0-9_]+)+|[A-Za-z0-9_]+(?:::[A-Za-z0-9_]+)*)(?:\.|\+)";
/// A printed code address: `[<ffffffff813a0886>]`.
pub(crate) const PC: &str = r"\[<?(?:0x)?[0-9a-f]+>?\]";

/// x86/arm64 frame: `[<pc>] [<pc>] ? func.isra.0+0x1/0x2 [mod]`; `?` frames are
/// unreliable guesses of the unwinder and are not frames for titles.
static FRAME: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(&format!(
        r"^\s*(?:{PC}\s+){{0,2}}(\?\s+)?(<[^>\s]+>(?:::[A-Za-z0-9_]+)+|[A-Za-z0-9_]+(?:::[A-Za-z0-9_]+)*)(?:\.[A-Za-z0-9_]+)*\+0x[0-9a-f]+(?:/0x[0-9a-f]+)?(?:\s+\[([A-Za-z0-9_]+)\])?"
    ))
    .expect("frame regex")
});

/// arm32 frame: `[<pc>] (func) from [<pc>] (caller)`.
static ARM_FRAME: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^\s*\[<?(?:0x)?[0-9a-f]+>?\] \(([A-Za-z0-9_.]+)\) from \[<?(?:0x)?[0-9a-f]+>?\] \(([A-Za-z0-9_.]+)(?:\+0x[0-9a-f]+/0x[0-9a-f]+)?\)")
        .expect("arm frame regex")
});

/// Lines that begin a stack trace section of a report.
pub(crate) static STACK_START: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"Call (?:T|t)race|Backtrace:|Allocated:|Allocated by task [0-9]+:|Freed:|Freed by task [0-9]+:|Allocated in |Freed in |Last potentially related work creation:|Second to last potentially related work creation:|Stack:\s*$|^\s*(?:allocated|freed) by task [0-9]+|\(in kfence-#[0-9]+\):|Uninit was (?:stored|created)|^\s*Local variable|BUG: (?:KMSAN|KCSAN|KFENCE): |^\s*backtrace(?: \(crc [0-9a-f]+\))?:")
        .expect("stack start regex")
});

/// Generic infrastructure: never the guilty frame (after syzkaller's skip list).
pub(crate) static SKIP: LazyLock<RegexSet> = LazyLock::new(|| {
    RegexSet::new([
        "__sanitizer",
        "__asan",
        "kasan",
        "hwasan",
        "__msan",
        "kmsan",
        "kcsan_",
        "kfence_",
        "check_memory_region",
        "check_heap_object",
        "check_object",
        "read_word_at_a_time",
        "(read|write)_once_.*nocheck",
        "print_address_description",
        "^panic$",
        "^nmi_panic",
        "invalid_op",
        "report_bug",
        "fixup_bug",
        "print_report",
        "print_usage_bug",
        "do_error",
        "_trap$|do_trap",
        "show_stack",
        "dump_stack",
        "walk_stack",
        "dump_backtrace",
        "warn_slowpath",
        "warn_alloc",
        "warn_bogus",
        "^__warn",
        "^warn_",
        "alloc_page",
        "^k?v?(?:m|z|c)alloc",
        "krealloc",
        "kmem_cache",
        "allocate_slab",
        "folio_(?:alloc|unlock)",
        "filemap_alloc_folio",
        "__filemap_get_folio",
        "find_or_create_page",
        "do_read_cache_folio",
        "read_cache_page",
        "pagecache_get_page",
        "grab_cache_page_write_begin",
        "slab_",
        "^__slab",
        "^kfree",
        "debug_object",
        "timer_is_static_object",
        "work_is_static_object",
        "__might_fault",
        "print_unlock",
        "imbalance_bug",
        "lockdep",
        "bh_enable",
        "bh_disable",
        "perf_trace",
        "lock_acquire",
        "lock_release",
        "lock_class",
        "mark_lock",
        "(reacquire|mark)_held_locks",
        "raw_spin_rq",
        "spin_lock",
        "spin_trylock",
        "spin_unlock",
        "read_lock",
        "read_trylock",
        "write_lock",
        "write_trylock",
        "read_unlock",
        "write_unlock",
        "^down$",
        "^down_",
        "^up_read",
        "^up_write",
        "^up$",
        "^mutex_",
        "^__mutex_",
        "^rt_mutex_",
        "owner_on_cpu",
        "osq_lock",
        "osq_unlock",
        "queued_spin_lock",
        "_raw_",
        "atomic(64)?_(dec|inc|read|set|or|xor|and|add|sub|fetch|xchg|cmpxchg|try)",
        "^(set|clear|change|test)_bit",
        "^__wake_up",
        "^refcount_",
        "^kref_",
        "ref_tracker",
        "memcpy",
        "memcmp",
        "memset",
        "memchr",
        "memmove",
        "memdup",
        "strcmp",
        "strncmp",
        "strchr",
        "strlen",
        "strcpy",
        "strscpy",
        "strncpy_from_user",
        "strnlen_user",
        "^bitmap",
        "copy_.*_user",
        "copyin",
        "copyout",
        "put_user",
        "get_user",
        "might_fault",
        "might_sleep",
        "^__might_",
        "list_add",
        "list_del",
        "list_replace",
        "list_move",
        "list_splice",
        "^rb_",
        "^__rb_",
        "_indirect_thunk_",
        "string",
        "pointer",
        "snprintf",
        "scnprintf",
        "kasprintf",
        "kvasprintf",
        "printk",
        "va_format",
        "^vsnprintf",
        "dev_info",
        "dev_notice",
        "dev_warn",
        "dev_err",
        "dev_alert",
        "dev_crit",
        "dev_emerg",
        "program_check_exception",
        "program_check_common",
        "^del_timer",
        "^flush_work",
        "^__flush_work",
        "__cancel_work_timer",
        "cancel_work_sync",
        "try_to_grab_pending",
        "flush_workqueue",
        "drain_workqueue",
        "destroy_workqueue",
        "queue_work",
        "finish_wait",
        "kthread_stop",
        "^sysvec_",
        "^exc_",
        "^asm_exc_",
        "^asm_sysvec",
        "^do_syscall_",
        "^syscall_",
        "^_+sys_",
        "^x64_sys_call",
        "^entry_SYSCALL",
        "^entry_",
        "^ret_from_fork",
        "^__do_fast_syscall",
        "^do_fast_syscall",
        "^do_int80",
        "^el0_svc",
        "^el0t_",
        "^invoke_syscall",
        "^__invoke_syscall",
        "^ret_fast_syscall",
        "^vector_swi",
        "^__entry_text",
        "^unwind_backtrace",
        "^__irq_svc",
        "^error_entry",
        "^page_fault$",
        "^do_page_fault",
        "^__do_page_fault",
        "^handle_page_fault",
        "^do_user_addr_fault",
        "^do_kern_addr_fault",
        "^no_context",
        "^page_fault_oops",
        "^kernelmode_fixup_or_oops",
        "^spurious_kernel_fault",
        "^oops_",
        "^die$",
        "^__die",
        "^die_body",
        "^do_general_protection",
        "^general_protection",
        "^do_invalid_op",
        "^handle_bug",
        "^do_divide_error",
        "^ubsan_",
        "^__ubsan_",
        "^__schedule$",
        "^schedule$",
        "^schedule_timeout",
        "^schedule_preempt_disabled",
        "^schedule_hrtimeout",
        "^io_schedule",
        "^preempt_schedule",
        "^__cond_resched",
        "^_cond_resched",
        "^__wait_for_common",
        "^wait_for_completion",
        "^do_wait_for_common",
        "^rcu_read_lock",
        "^rcu_read_unlock",
        "^__rcu_read",
        "^___might_sleep",
        "^__might_sleep",
        "^lock_is_held",
        "^_find_next_bit",
        "^find_next_bit",
        "^fortify_panic",
        "^__fortify",
        "^__memcpy",
        "^__memset",
        "^__memmove",
        "^kvfree",
        "^vfree",
        "^vunmap",
        "^__kmalloc",
        "^__kasan",
        "^check_preemption_disabled",
        "^debug_smp_processor_id",
        "^__this_cpu_preempt",
        "^report_",
        "^bug_handler",
        "^kernel_fault",
        "^__kernel_fault",
        "^trace_",
        "^__trace_",
        "^rcu_lock_acquire",
        "^rcu_lock_release",
        "^ktime_get",
        "^el1_",
        "^el1h_",
        "^el0_",
        "^el0t_",
        "^__timer_delete",
        "^timer_delete",
        "queue_delayed_work",
        "^get_taint$",
        "^put_device$",
        "^arch_local_irq",
        "add_uevent_var",
        "v4l2_device_release",
        "^do_tag_check_fault",
        "^do_mem_abort",
        "^el1_abort",
        "^el1h_64_sync",
        "^el1_da",
        "^do_translation_fault",
        "^do_bad_area",
        "^(?:_|simple_)?copy_(?:page_)?to_iter",
        "kmalloc_large",
        "^__kmalloc",
        "^___kmalloc",
        "^iput$",
        "^unlock_page$",
        "^__try_to_del_timer",
        "^try_to_del_timer",
        "^__mod_timer",
        "^mod_timer",
        "^insert_work$",
        "^psi_",
        "^usb_control_msg$",
        "^usb_start_wait_urb$",
        "^usb_bulk_msg$",
        "^device_remove_",
        "^dpm_sysfs_remove",
        "^copy_user_",
        "panic",
        "kobject_",
        "^sysfs_",
        "^device_add$",
        "^device_del$",
        "^device_unregister",
        "^device_destroy",
        "^device_release",
        "^devres_release",
        "^get_device_parent",
        "^hwrng_unregister",
        "^i2c_del_adapter",
        "^__unregister_client",
        "^device_for_each_child",
        "^rollback_registered",
        "^unregister_netdev(?:ice)?$",
        "^unregister_netdevice_many",
        "^unregister_netdevice_queue",
        "^register_netdev(?:ice)?$",
        "^hci_unregister_dev",
        "^vb2_queue_release",
        "^sk_stream_kill_queues",
        "^sk_destruct",
        "^__sk_destruct",
        "^inet_csk_destroy_sock",
        "^tcp_v4_destroy_sock",
        "^sk_free",
        "^__sk_free",
        "^sock_put",
        "^tcp_close$",
        "^inet_release",
        "sock_release",
        "^sock_close",
        "^__fput",
        "^____fput",
        "^task_work_run",
        "^usb_kill_anchored_urbs",
        "^usb_kill_urb",
        "^complete$",
        "^complete_all$",
        "rq_lock",
        "^skb_(?:put|push|pull|over_panic|under_panic)$",
        "show_trace",
        "print_context_stack",
        "^dump_trace",
        "stack_trace",
        "save_stack",
        "stack_walk",
        "^unwind_",
        "kernel_text_address",
        "is_ftrace_trampoline",
        "^should_fail",
        "^__should_fail",
        "^fail_dump",
        "^__rela_dyn",
        "^assertfail",
        "^__phys_addr",
        "hex_dump",
        "^crc[0-9]",
        "^crc_",
        "^aes",
        "^strstr",
        "^_copy_to_iter",
        "^copy_to_iter",
        "^_copy_from_iter",
        "^copy_from_iter",
        "^rhashtable_lookup",
        "^ida_free",
        "^ida_alloc",
        "^drop_nlink",
        "^fast_dput",
        "^check_panic_on_warn",
        "^__do_kernel_fault",
        "^do_kernel_fault",
        "^free_large_kmalloc",
        "^cleanup_srcu_struct",
        "^lock_timer_base",
        "^__alloc_frozen_pages",
        "^alloc_frozen_pages",
        "^rwsem_down",
        "^debug_check_no_locks",
        "^tasklet_action",
        "^stack_trace_consume",
        "^psi_group_change",
        "^folio_wake_bit",
        "^task_blocks_on_rt_mutex",
        "^ret_from_exception",
        "^usb_submit_urb",
        "^__phys_",
        "^new_sync_read",
        "^new_sync_write",
        "^sock_common_setsockopt",
        "^do_recvmmsg",
        "^do_sendmmsg",
        "^sendmsg_copy_msghdr",
        "^kill_fasync",
        "^__kill_fasync",
    ])
    .expect("skip regex set")
});

/// A frame recognised on a line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Frame {
    /// Normalised function name (offsets and compiler suffixes removed).
    pub func: String,
    /// Module in brackets after the frame, e.g. `vexfs`.
    pub module: Option<String>,
}

/// Parses a frame line; `?` (unreliable) frames give `None`.
pub(crate) fn parse_frame(line: &str) -> Option<Frame> {
    if let Some(c) = ARM_FRAME.captures(line) {
        return Some(Frame {
            func: normalize_func(&c[1]),
            module: None,
        });
    }
    let c = FRAME.captures(line)?;
    if c.get(1).is_some() {
        return None;
    }
    let func = c.get(2)?.as_str();
    Some(Frame {
        func: normalize_func(func),
        module: c.get(3).map(|m| m.as_str().to_string()),
    })
}

/// The caller named by an arm32 `(f) from (caller)` frame line.
pub(crate) fn arm_caller(line: &str) -> Option<Frame> {
    let c = ARM_FRAME.captures(line)?;
    Some(Frame {
        func: normalize_func(&c[2]),
        module: None,
    })
}

/// Strips syscall-entry wrappers so one syscall gets one name across kernel
/// versions: arch wrappers become `sys_foo`, inner wrappers become `foo`.
pub(crate) fn normalize_func(f: &str) -> String {
    let f = f.split('.').next().unwrap_or(f);
    static ARCH: LazyLock<Regex> = LazyLock::new(|| {
        Regex::new(r"^__(?:x64|ia32|arm64|riscv|s390x|s390|powerpc|mips)_(?:compat_)?sys_(.+)$")
            .expect("arch syscall regex")
    });
    static INNER: LazyLock<Regex> = LazyLock::new(|| {
        Regex::new(r"^(?:(?:compat_)?SyS_|ksys_|__se_(?:compat_)?sys_|__do_(?:compat_)?sys_|C_SYSC_|SYSC_)(.+)$")
            .expect("inner syscall regex")
    });
    if let Some(c) = ARCH.captures(f) {
        return format!("sys_{}", &c[1]);
    }
    if let Some(c) = INNER.captures(f) {
        return c[1].to_string();
    }
    f.to_string()
}

/// True when `func` is generic infrastructure, per the global list or `extra`.
pub(crate) fn is_skipped(func: &str, extra: &[&str]) -> bool {
    SKIP.is_match(func) || extra.iter().any(|s| func.contains(s))
}

/// Frames where stall reports anchor: the guilty code is the caller just above.
static STALL_ANCHORS: LazyLock<RegexSet> = LazyLock::new(|| {
    RegexSet::new([
        "^process_one_work$", "^process_scheduled_works$", "^worker_thread$",
        "^kthread$", "^ret_from_fork", "^rcu_core$", "^rcu_do_batch$", "^__do_softirq$",
        "^do_softirq", "^handle_softirqs$", "^irq_exit", "^kthread_worker_fn$",
        "^__netif_receive_skb", "^netif_receive_skb", "^process_backlog$",
        "^net_rx_action$", "^call_timer_fn$", "^expire_timers$", "^__run_timers",
        "^run_timer_softirq$", "^do_syscall_", "^entry_SYSCALL", "^syscall_call$",
        "^vfs_write$", "^__vfs_write$", "^vfs_read$", "^__vfs_read$", "^vfs_writev$",
        "^vfs_readv$", "^task_work_run$", "^exit_to_usermode_loop$", "^exit_to_user_mode",
        "^syscall_exit_to_user_mode", "^prepare_exit_to_usermode$", "^cpu_startup_entry$",
        "^do_idle$", "^start_secondary$", "^rest_init$", "^rtnetlink_rcv_msg$",
        "^nfnetlink_rcv_msg$", "^mmap_region$", "^do_mmap", "^vm_mmap_pgoff$",
        "^(?:sys_)?(?:read|write|ioctl|mmap|mmap_pgoff|sendmsg|recvmsg|sendto|recvfrom|writev|readv|pwrite64|pread64|compat_ioctl|setsockopt|getsockopt)$",
        "^compat_sys_ioctl$", "^blkdev_ioctl$", "^compat_blkdev_ioctl$", "^sock_ioctl$",

        "^compat_sys_ioctl$", "^do_iter_write$", "^do_iter_read$", "^do_iter_readv_writev$",
        "^do_vfs_ioctl$", "^vfs_ioctl$", "^sock_sendmsg", "^sock_recvmsg",
         "^sys_(read|write|ioctl|sendmsg|sendto|recvmsg|recvfrom|setsockopt|getsockopt|connect|bind|writev|readv|pwrite64|pread64|fsync)$",
        "^el0_svc", "^invoke_syscall", "^ret_fast_syscall$", "^__x64_sys_call$",
        "^x64_sys_call$", "^do_el0_svc",
    ])
    .expect("stall anchors")
});

/// Waiting and locking machinery a hung task sits in (substrings).
const HUNG_WAIT: &[&str] = &[
    "sched",
    "_lock",
    "_slowlock",
    "down",
    "rwsem",
    "completion",
    "kthread",
    "wait",
    "synchronize",
    "context_switch",
    "__switch_to",
    "cancel_delayed_work",
    "rcu_barrier",
];

/// Which of the collected frames a title names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Extractor {
    /// The first frame not on the skip list.
    First,
    /// Stalls: the frame just above the first dispatch/syscall anchor, so that a
    /// loop anywhere in the same syscall or work item gives the same title.
    Stall,
    /// Hung tasks: hangs in `rtnl_lock` or any `synchronize_*` (RCU) are grouped,
    /// since such hangs show up at random victim stacks; else the first frame that
    /// is not waiting/locking machinery.
    Hung,
}

/// Picks the title frame from candidate frames, or `None` when none qualifies.
pub(crate) fn pick(frames: &[String], skip: &[&str], extractor: Extractor) -> Option<String> {
    let kept: Vec<&String> = frames.iter().filter(|f| !is_skipped(f, skip)).collect();
    match extractor {
        Extractor::First => kept.first().map(|f| f.to_string()),
        Extractor::Hung => {
            for f in &kept {
                if f.contains("rtnl_lock") {
                    return Some(f.to_string());
                }
                if [
                    "synchronize_rcu",
                    "synchronize_srcu",
                    "synchronize_net",
                    "synchronize_sched",
                ]
                .iter()
                .any(|a| f.contains(a))
                {
                    return Some("synchronize_rcu".to_string());
                }
            }
            kept.iter()
                .find(|f| !HUNG_WAIT.iter().any(|w| f.contains(w)))
                .map(|f| f.to_string())
        }
        Extractor::Stall => {
            // A stall spinning in a cross-CPU call is a stall in that call.
            if frames.iter().any(|f| f.starts_with("smp_call_function")) {
                return Some("smp_call_function".to_string());
            }
            let mut prev: Option<&String> = None;
            for f in frames {
                if STALL_ANCHORS.is_match(f) {
                    // A stall whose first real frame is a dispatcher (kthread, work
                    // loop) has no identifiable culprit.
                    return prev.map(|p| p.to_string());
                }
                if !is_skipped(f, skip) {
                    prev = Some(f);
                }
            }
            prev.map(|p| p.to_string())
                .or_else(|| kept.first().map(|f| f.to_string()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_forms() {
        let f = parse_frame(" trig_write+0x86/0xbd [crashmod]").unwrap();
        assert_eq!(f.func, "trig_write");
        assert_eq!(f.module.as_deref(), Some("crashmod"));
        assert_eq!(parse_frame(" ? do_set_pte+0x189/0x1d0"), None);
        let f = parse_frame(" [<ffffffff813a0886>] _sched_show_task+0x2a6/0x4f0").unwrap();
        assert_eq!(f.func, "_sched_show_task");
        let f = parse_frame("  check_cpu_stall.isra.61+0x6e6/0x15b0").unwrap();
        assert_eq!(f.func, "check_cpu_stall");
        let f = parse_frame(" __x64_sys_rmdir+0x1/0x2").unwrap();
        assert_eq!(f.func, "sys_rmdir");
        assert_eq!(normalize_func("SyS_rmdir"), "rmdir");
        assert_eq!(normalize_func("__se_sys_mremap"), "mremap");
        let f = parse_frame(
            "[<803b18e8>] (nfs_wait.part.3) from [<803b1d64>] (nfs_get_client+0x2b0/0x488)",
        )
        .unwrap();
        assert_eq!(f.func, "nfs_wait");
        assert_eq!(parse_frame("Hardware name: QEMU"), None);
        let f = parse_frame(" <rust_binder::process::Process>::update_ref+0x1/0x2").unwrap();
        assert_eq!(f.func, "<rust_binder::process::Process>::update_ref");
    }
}

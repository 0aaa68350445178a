//! Picking the frame a title names from a report's candidate frames: the plain
//! first-non-infrastructure rule, and the stall and hung-task rules that look past
//! dispatchers and wait machinery.

use std::sync::LazyLock;

use regex::RegexSet;

use super::frames::is_skipped;

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
        // Dispatchers through a function pointer: the handler called is the culprit.
        "^__fput$", "^netlink_dump$", "^__netlink_dump_start$",
        "^call_timer_fn$",
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
    /// Stack overflows: where the stack ran out is happenstance (any function can
    /// push it over), the bug is the recursion. As for stalls, the frame just above
    /// the dispatch/syscall anchor names the request that recursed; it is looked
    /// for over the whole trace, which a recursion makes deep.
    Overflow,
}

impl Extractor {
    /// Most frames a trace is read for: deep enough for a recursion that filled the
    /// stack (16 KiB of at least 16-byte frames), a screenful for the rest.
    pub(crate) fn frame_cap(self) -> usize {
        match self {
            Extractor::Overflow => 1024,
            _ => 64,
        }
    }
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
        Extractor::Stall | Extractor::Overflow => {
            // A stall spinning in a cross-CPU call is a stall in that call.
            if extractor == Extractor::Stall
                && frames.iter().any(|f| f.starts_with("smp_call_function"))
            {
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

//! Unit tests of the frame-selection and report-type rules, each on a small
//! synthetic report written for the rule (not copied from the corpus).

use super::{Category, classify};

fn one(log: &str) -> super::CrashReport {
    let mut r = classify(log.as_bytes());
    assert!(!r.is_empty(), "no report in:\n{log}");
    r.remove(0)
}

#[test]
fn stall_names_the_handler_behind_a_compat_shim() {
    let r = one("INFO: rcu_sched self-detected stall on CPU\n\
         Call Trace:\n\
         <IRQ>\n\
          update_process_times+0x35/0x70\n\
          apic_timer_interrupt+0x8e/0xa0\n\
         </IRQ>\n\
         RIP: 0010:foo_ioctl+0x15e4/0x1b50\n\
          foo_compat_ioctl+0xb3/0x140\n\
          compat_blkdev_ioctl+0x39c/0x1950\n\
          do_fast_syscall_32+0x3c1/0xbf1\n");
    assert_eq!(r.title, "INFO: rcu detected stall in foo_ioctl");
    assert_eq!(r.category, Category::SystemHang);
}

#[test]
fn stall_in_a_release_handler_is_named_by_the_handler_not_fput() {
    let r = one("INFO: rcu_sched self-detected stall on CPU\n\
         Call Trace:\n\
          apic_timer_interrupt+0x8e/0xa0\n\
         RIP: 0010:spin_loop+0x1/0x2\n\
          widget_release+0x10/0x20\n\
          __fput+0x2ff/0x890\n\
          task_work_run+0x145/0x1c0\n");
    assert_eq!(r.title, "INFO: rcu detected stall in widget_release");
}

#[test]
fn timer_api_frames_are_skipped_for_their_caller() {
    let r = one(
        "BUG: KASAN: slab-use-after-free in lock_timer_base+0x1d9/0x220\n\
         Read of size 8 at addr ffff888012345678 by task a/1\n\
         Call Trace:\n\
          kasan_report+0xd9/0x110\n\
          lock_timer_base+0x1d9/0x220\n\
          __try_to_del_timer_sync+0x8d/0x170\n\
          __timer_delete_sync+0xf4/0x1b0\n\
          sk_stop_timer_sync+0x1b/0x80\n\
          proto_del_timer+0x1ae/0x320\n\
          proto_rcv+0x1f4d/0x26a0\n",
    );
    assert_eq!(
        r.title,
        "KASAN: slab-use-after-free Read in proto_del_timer"
    );
}

#[test]
fn xarray_and_string_helpers_are_skipped() {
    let r = one(
        "WARNING: CPU: 0 PID: 1 at lib/xarray.c:1 xas_find+0x1/0x2\n\
         RIP: 0010:xas_find+0x1/0x2\n\
         Call Trace:\n\
          xa_find+0x1a0/0x330\n\
          strlen+0x1/0x2\n\
          thing_lookup+0x93/0x260\n\
          thing_ioctl+0x11d/0x4e0\n",
    );
    assert_eq!(r.title, "WARNING in thing_lookup");
}

#[test]
fn truncated_lockdep_report_names_the_lock_site() {
    // Cut right after the acquisition site: the site is the title, the report is
    // corrupted, and a skipped helper there is still better than no name.
    let r = one("======================================================\n\
         [ INFO: possible circular locking dependency detected ]\n\
         4.0.0 #1\n\
         -------------------------------------------------------\n\
         kworker/246 is trying to acquire lock:\n\
          (wq){+.+.+.}, at: [<ffffffff8105bbd0>] flush_workqueue+0x0/0xb0\n");
    assert_eq!(r.title, "possible deadlock in flush_workqueue");
    assert!(r.corrupted);
}

#[test]
fn held_lock_freed_names_the_freed_lock_site() {
    let r = one("=========================\n\
         WARNING: held lock freed!\n\
         a/1 is freeing memory ffff8800-ffff8801, with a lock still held there!\n\
         00000000cf45dbdb (sk_lock-AF_X){+.+.}, at: x_release+0x11a/0x3b0\n\
         2 locks held by a/1:\n\
          #0: 00000000c0a19dcd (&i_mutex){+.+.}, at: __sock_release+0x89/0x2a0\n\
          #1: 00000000cf45dbdb (sk_lock-AF_X){+.+.}, at: x_release+0x11a/0x3b0\n\
         Call Trace:\n\
          dump_stack+0x172/0x1f0\n\
          kfree+0xb1/0x220\n\
          x_destroy_socket+0x3df/0x4a0\n\
          x_release+0x323/0x3b0\n");
    assert_eq!(r.title, "WARNING: held lock freed in x_release");
    assert_eq!(r.category, Category::Deadlock);
}

#[test]
fn invalid_wait_context_is_a_locking_bug() {
    let r = one("=============================\n\
         [ BUG: Invalid wait context ]\n\
         5.9.0 #15 Not tainted\n\
         -----------------------------\n\
         a/1 is trying to lock:\n\
         ffff00004a747498 (&mm->mmap_lock){++++}-{3:3}, at: __might_fault+0x108/0x1b0\n\
         stack backtrace:\n\
         Call trace:\n\
          dump_backtrace+0x0/0x4d0\n\
          __lock_acquire+0x1a04/0x4930\n\
          lock_acquire+0x278/0xb88\n\
          __might_fault+0x138/0x1b0\n\
          opt_set+0x4a8/0x4738\n\
          __arm64_sys_setsockopt+0xa8/0x108\n");
    assert_eq!(r.title, "WARNING: locking bug in opt_set");
    assert_eq!(r.category, Category::Deadlock);
}

#[test]
fn warning_whose_trace_belongs_to_another_task_is_corrupted() {
    let r = one(
        "WARNING: CPU: 0 PID: 100 at mm/slab_common.c:1012 kmalloc_slab+0x5d/0x70\n\
          should_failslab+0xec/0x120\n\
          kmem_cache_alloc+0x47/0x760\n\
          other_fill_super+0x1/0x2\n\
         CPU: 1 PID: 200 Comm: b Not tainted 4.16.0 #11\n\
         Call Trace:\n\
          dump_stack+0x1a7/0x27d\n\
          other_fill_super+0x1/0x2\n",
    );
    assert_eq!(r.title, "WARNING: kmalloc bug in corrupted");
    assert!(r.corrupted);
}

#[test]
fn trusty_panic_with_a_cut_caller_line() {
    let r = one(
        "[ 1.0] trusty: panic (caller [ 1.1] trusty: 0xffffffffe000fbb8): \
         ASSERT FAILED at (trusty/kernel/ipc.c:472): !list_in_list(&c->node)\n\
         [ 1.2] trusty: HALT: (reason = 9)\n",
    );
    assert_eq!(r.title, "trusty: ASSERT FAILED: !list_in_list(&c->node)");
    assert_eq!(r.category, Category::KernelPanic);
    let r = one("[ 1.0] trusty: panic (caller 0xffffffffe0002314): failed(-5) to start app 6\n");
    assert_eq!(r.title, "trusty: panic: failed(-NUM) to start app NUM");
}

#[test]
fn powerpc_interrupt_marker_names_the_trapping_function() {
    let r = one(
        "WARNING: CPU: 1 PID: 4057 at arch/powerpc/mm/slb.c:79 slb_check+0x2c/0x70\n\
         Call Trace:\n\
         [c00000003ae5b800] [c00000000135c19c] dump_stack+0x128/0x1cc (unreliable)\n\
         [c00000003ae5b9a0] [c00000000135a500] report_bug+0x150/0x270\n\
         [c00000003ae5bac0] [c0000000000090a4] program_check_common+0x184/0x190\n\
         --- interrupt: 700 at slb_check+0x2c/0x70\n\
         [c00000003ae5bdf0] [c00000000009651c] do_slb_fault+0x10c/0x250\n",
    );
    assert_eq!(r.title, "WARNING in slb_check");
}

#[test]
fn stall_absorbs_a_warning_printed_while_dumping() {
    let r = one(
        "[ 1.0][ C1] rcu: INFO: rcu_preempt detected stalls on CPUs/tasks:\n\
         [ 1.0][ C1] rcu: \tTasks blocked on level-0 rcu_node (CPUs 0-1):\n\
         [ 1.0][ C1] ------------[ cut here ]------------\n\
         [ 1.0][ C1] WARNING: CPU: 1 PID: 47 at kernel/sched/core.c:2698 dumper+0x18b/0x320\n\
         [ 1.0][ C1] Call Trace:\n\
         [ 1.0][ C1]  <IRQ>\n\
         [ 1.0][ C1]  __warn+0x227/0x250\n\
         [ 1.0][ C1]  rcu_sched_clock_irq+0x12ec/0x1eb0\n\
         [ 1.0][ C1]  __sysvec_apic_timer_interrupt+0xf0/0x260\n\
         [ 1.0][ C1]  </IRQ>\n\
         [ 1.0][ C1] RIP: 0010:smp_call_function_single+0x311/0x450\n\
         [ 1.0][ C1]  spin_all+0x1/0x2\n",
    );
    assert_eq!(r.title, "INFO: rcu detected stall in smp_call_function");
}

#[test]
fn placeholder_names_are_never_frames() {
    // A damaged line can leave `corrupted+0x..` where a frame was.
    let r = one("WARNING: CPU: 0 PID: 1 at fs/x.c:1 0x0\n\
         Call Trace:\n\
          corrupted+0x1/0x2\n\
          x_write+0x1/0x2\n");
    assert_eq!(r.title, "WARNING in x_write");
}

#[test]
fn cxx_mangled_names_are_demangled() {
    let r = one("WARNING: CPU: 0 PID: 1 at a.cc:1 0x0\n\
         Call Trace:\n\
          _Z8fakeNameiii+0x1/0x2\n");
    assert_eq!(r.title, "WARNING in fakeName");
}

/// A recursion that fills the stack: the frames where it ran out, then the cycle
/// `depth` times, entered from `entry` under a netlink request.
fn overflow_trace(depth: usize, entry: &str) -> String {
    let mut t = String::from(" widget_stats_fold+0x12d/0x2e0\n ? lock_acquire+0x442/0x510\n");
    for _ in 0..depth {
        t.push_str(" widget_get_stats+0xf5/0x4d0\n dev_get_stats+0xa5/0x2b0\n");
    }
    t.push_str(&format!(
        " {entry}+0x35/0xd0\n rtnetlink_rcv_msg+0x43f/0xc50\n netlink_rcv_skb+0x15a/0x430\n\
          do_syscall_64+0x35/0xb0\n entry_SYSCALL_64_after_hwframe+0x44/0xae\n"
    ));
    t
}

#[test]
fn stack_overflow_names_the_recursions_entry_not_where_the_stack_ran_out() {
    // A hundred levels deep: past the frames a title normally reads.
    let log = format!(
        "BUG: stack guard page was hit at ffffc900190cfff8 (stack is ffffc900190d0000..ffffc900190d7fff)\n\
         kernel stack overflow (double-fault): 0000 [#1] PREEMPT SMP KASAN\n\
         RIP: 0010:netdev_next_lower_dev_rcu+0x8/0xb0\n\
         Call Trace:\n{}",
        overflow_trace(100, "widget_newlink")
    );
    let r = one(&log);
    assert_eq!(r.title, "BUG: stack guard page was hit in widget_newlink");
    assert_eq!(r.category, Category::MemoryCorruption);
    assert!(!r.corrupted);
    // The same on arm64, where the overflow is a panic with its handler's frames.
    let log = format!(
        "Kernel panic - not syncing: kernel stack overflow\n\
         CPU: 1 PID: 16874 Comm: a Not tainted 6.0.0 #0\n\
         Call trace:\n dump_backtrace+0x1c4/0x1f0\n panic+0x218/0x50c\n\
          panic_bad_stack+0x134/0x154\n handle_bad_stack+0x34/0x48\n __bad_stack+0x78/0x7c\n{}",
        overflow_trace(100, "widget_newlink")
    );
    assert_eq!(one(&log).title, "kernel stack overflow in widget_newlink");
    // Without its trace, the faulting RIP is no name: any function can be the last
    // to push.
    let r = one(
        "BUG: stack guard page was hit at ffffc900190cfff8 (stack is x)\n\
         RIP: 0010:some_leaf+0x8/0xb0\n",
    );
    assert_eq!(r.title, "BUG: stack guard page was hit in corrupted");
    assert!(r.corrupted);
}

#[test]
fn buffer_head_checks_blame_the_filesystem() {
    let r = one("!buffer_uptodate(bh)\n\
         WARNING: fs/buffer.c:1183 at mark_buffer_dirty+0x299/0x3f0, CPU#1: a/1\n\
         RIP: 0010:mark_buffer_dirty+0x299/0x3f0\n\
         Call Trace:\n <TASK>\n widgetfs_get_block+0x5da/0xae0\n\
          __block_write_begin_int+0x6c6/0x1910\n block_write_begin+0x8d/0x120\n </TASK>\n");
    assert_eq!(r.title, "WARNING in widgetfs_get_block");
}

//! Title normalisation (numbers, addresses, offsets -> stable placeholders) and the
//! mapping from a title to its category.

use std::sync::LazyLock;

use regex::Regex;

use super::Category;

struct Replace {
    re: Regex,
    with: &'static str,
}

/// Applied in order; after syzkaller's `replaceTable` so titles dedupe across runs.
static REPLACE: LazyLock<Vec<Replace>> = LazyLock::new(|| {
    let r = |re: &str, with: &'static str| Replace {
        re: Regex::new(re).expect("replace regex"),
        with,
    };
    vec![
        // `file.c:123` -> `file.c:LINE`.
        r(r"(\.[a-z]+):[0-9]+", "${1}:LINE"),
        r(r"CPU#[0-9]+", "CPU"),
        r(r"\b0x[0-9a-f]+\b", "ADDR"),
        // Long digit runs (pids, temp dir suffixes, jiffies) anywhere are numbers.
        r(r"[0-9]{5,}\b", "NUM"),
        // Standalone decimal numbers.
        r(r"(^|[^a-zA-Z0-9_])[0-9]+\b", "${1}NUM"),
    ]
});

static OFFSET: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"([a-zA-Z<][a-zA-Z0-9_.:<>]*)\+0x[0-9a-f]+/0x[0-9a-f]+").expect("offset regex")
});

static HEX: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"(^|[^a-zA-Z0-9_])((?:0x)?[0-9a-f]{6,})\b").expect("hex regex"));

/// Makes a raw title stable: strips offsets and replaces numbers and addresses.
pub(crate) fn normalize(title: &str) -> String {
    // Long hex words with a digit are addresses (a digit, so `facade` survives).
    // `func+0x12/0x34` -> `func`: offsets change with every build.
    let t = OFFSET.replace_all(title.trim(), "${1}");
    let mut t = HEX
        .replace_all(&t, |c: &regex::Captures| {
            if c[2].bytes().any(|b| b.is_ascii_digit()) {
                format!("{}ADDR", &c[1])
            } else {
                c[0].to_string()
            }
        })
        .into_owned();
    for r in REPLACE.iter() {
        // The number patterns may overlap (`1,2`), so replace until stable.
        for _ in 0..3 {
            let next = r.re.replace_all(&t, r.with).into_owned();
            if next == t {
                break;
            }
            t = next;
        }
    }
    t
}

/// The category a title belongs to, first rule wins (see the corpus README).
pub(crate) fn category(title: &str) -> Category {
    use Category::*;
    let t = title;
    let has = |s: &str| t.contains(s);
    let starts = |s: &str| t.starts_with(s);
    if starts("KCSAN") || starts("SYZFAIL") || starts("SYZFATAL") || has("go runtime error") {
        return Other;
    }
    if starts("memory leak")
        || has("kmemleak")
        || starts("unregister_netdevice: waiting for")
        || has("Busy inodes")
        || has("Dentry still")
        || has("still in use")
    {
        return ResourceLeak;
    }
    if starts("KASAN")
        || starts("KFENCE")
        || starts("KMSAN")
        || starts("UBSAN")
        || has("general protection fault")
        || has("stack segment")
        || has("paging request")
        || has("access to user memory")
        || has("bad-access")
        || has("corrupted list")
        || has("Bad page")
        || has("stack-protector")
        || has("stack is corrupted")
        || has("corrupted stack end")
        || has("stack guard page")
        || has("stack overflow")
        || has("bad usercopy")
        || has("refcount bug")
        || has("Object already free")
        || has("file count is zero")
        || starts("INFO: Allocated")
        || starts("INFO: Freed")
        || has("with overflow")
    {
        return MemoryCorruption;
    }
    if has("task hung")
        || has("can't die")
        || has("soft lockup")
        || has("hard lockup")
        || has("Invalid wait context")
        || has("rwlock")
        || has("workqueue lockup")
        || has("deadlock")
        || has("inconsistent lock state")
        || has("locking")
        || has("unlock balance")
        || has("held lock freed")
        || has("lock held when returning")
        || has("still has locks held")
        || has("nested lock was not taken")
        || has("leaked lock")
        || has("suspicious RCU usage")
        || has("spinlock")
        || has("sleeping function called from invalid context")
        || has("scheduling while atomic")
        || has("in preemptible")
        || has("non-static key")
        || has("MAX_STACK_TRACE_ENTRIES")
        || has("MAX_LOCK")
        || has("hung_task")
        || has("locking bug")
    {
        return Deadlock;
    }
    if has("rcu detected stall") || starts("stall in") || has("lost connection") {
        return SystemHang;
    }
    if has("panic_on_warn") {
        return Warning;
    }
    if starts("kernel panic")
        || starts("PANIC:")
        || has("double fault")
        || has("unexpected kernel reboot")
        || starts("trusty")
    {
        return KernelPanic;
    }
    if starts("WARNING") {
        return Warning;
    }
    if has("NULL pointer dereference")
        || starts("kernel BUG")
        || starts("BUG:")
        || has("divide error")
        || has("invalid opcode")
        || has("int3")
        || has("Unhandled fault")
        || has("unable to handle")
        || has("Internal error")
        || has("Alignment trap")
    {
        return ModuleCrash;
    }
    Other
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes() {
        assert_eq!(
            normalize(
                "KASAN: use-after-free in do_con_write.part.23+0x1c50/0x1cb0 at addr ffff88000012c43a"
            ),
            "KASAN: use-after-free in do_con_write.part.NUM at addr ADDR"
        );
        assert_eq!(
            normalize("INFO: Allocated in fasync_helper+0x29/0x90 age=1 cpu=1 pid=6024"),
            "INFO: Allocated in fasync_helper age=NUM cpu=NUM pid=NUM"
        );
        assert_eq!(
            normalize("kernel panic: VFS: Unable to mount root fs on unknown-block(0,0)"),
            "kernel panic: VFS: Unable to mount root fs on unknown-block(NUM,NUM)"
        );
        assert_eq!(
            normalize("WARNING in udp4_lib_lookup2"),
            "WARNING in udp4_lib_lookup2"
        );
        assert_eq!(
            normalize("mkdir ./syzkaller-testdir264563108: x"),
            "mkdir ./syzkaller-testdirNUM: x"
        );
        assert_eq!(
            normalize("failed(-12) to start app 3"),
            "failed(-NUM) to start app NUM"
        );
    }

    #[test]
    fn categories() {
        assert_eq!(
            category("KASAN: use-after-free Read in f"),
            Category::MemoryCorruption
        );
        assert_eq!(category("INFO: task hung in f"), Category::Deadlock);
        assert_eq!(
            category("INFO: rcu detected stall in f"),
            Category::SystemHang
        );
        assert_eq!(category("WARNING in f"), Category::Warning);
        assert_eq!(category("kernel BUG in f"), Category::ModuleCrash);
        assert_eq!(category("kernel panic: x"), Category::KernelPanic);
        assert_eq!(
            category("kernel panic: hung_task: blocked tasks"),
            Category::Deadlock
        );
        assert_eq!(category("memory leak in f"), Category::ResourceLeak);
        assert_eq!(
            category("BUG: unable to handle kernel NULL pointer dereference in f"),
            Category::ModuleCrash
        );
    }
}

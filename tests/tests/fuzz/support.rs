//! The fuzz driver: a per-thread counting allocator, a seeded RNG, the case loop with
//! reproduction hints, a scripted peer for the async readers, byte mutators and the
//! embedded seed logs.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::OnceLock;
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

// ---------------------------------------------------------------------------------
// Heap accounting

/// Counts the bytes of every allocation against the thread that makes it. Per thread
/// because the targets run in parallel test threads; every target allocates and frees
/// on its own thread (no runtime threads: futures are polled in place).
struct Counting;

thread_local! {
    // `const` and drop-free: access never allocates and never fails, which the
    // allocator needs.
    static LIVE: Cell<isize> = const { Cell::new(0) };
    static PEAK: Cell<isize> = const { Cell::new(0) };
}

fn count(delta: isize) {
    let _ = LIVE.try_with(|live| {
        let now = live.get() + delta;
        live.set(now);
        let _ = PEAK.try_with(|peak| {
            if now > peak.get() {
                peak.set(now);
            }
        });
    });
}

// SAFETY: every call is passed to `System` unchanged; the wrapper only counts sizes
// in thread-local cells, which neither allocate nor unwind.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller upholds `alloc`'s contract, passed on as is.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            count(layout.size() as isize);
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as for `alloc`.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            count(layout.size() as isize);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from this allocator (that is, from `System`) with `layout`.
        unsafe { System.dealloc(ptr, layout) };
        count(-(layout.size() as isize));
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: `ptr` came from `System` with `layout`; the caller upholds the rest.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            count(new_size as isize - layout.size() as isize);
        }
        p
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Runs `f` and returns its result and the peak growth of this thread's live heap
/// while it ran (what `f` allocated beyond what was live when it started).
pub fn peak_heap<R>(f: impl FnOnce() -> R) -> (R, usize) {
    let base = LIVE.with(Cell::get);
    PEAK.with(|p| p.set(base));
    let r = f();
    let peak = PEAK.with(Cell::get);
    (r, usize::try_from(peak - base).unwrap_or(0))
}

/// Mebibytes, for messages.
pub fn mib(bytes: usize) -> String {
    format!("{:.2} MiB", bytes as f64 / (1024.0 * 1024.0))
}

// ---------------------------------------------------------------------------------
// Random numbers

/// SplitMix64: tiny, fast in debug builds, and good enough to drive generators.
pub struct Rng(u64);

fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl Rng {
    /// The generator of one case: a function of the seed, the target and the index
    /// only, so any case can be rerun alone.
    pub fn for_case(seed: u64, target: &str, case: u64) -> Rng {
        let name = target.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
        });
        Rng(mix(seed ^ mix(name ^ mix(case))))
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        mix(self.0)
    }

    /// Uniform in `0..n` (`n` > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + self.below(hi - lo + 1)
    }

    /// True with probability 1/n.
    pub fn one_in(&mut self, n: usize) -> bool {
        self.below(n) == 0
    }

    /// A random element.
    pub fn pick<'a, T>(&mut self, xs: &'a [T]) -> &'a T {
        &xs[self.below(xs.len())]
    }

    /// A random byte.
    pub fn byte(&mut self) -> u8 {
        self.next_u64() as u8
    }

    /// A size that is mostly small and sometimes large: uniform in `0..=max` after
    /// picking the order of magnitude, so short and long both come up often.
    pub fn size(&mut self, max: usize) -> usize {
        let bits = usize::BITS - max.leading_zeros();
        let cap = (1usize << self.below(bits as usize + 1)).min(max);
        self.below(cap + 1)
    }

    /// Random interesting u64: edges and powers of ten as often as plain random.
    pub fn number(&mut self) -> u64 {
        match self.below(6) {
            0 => *self.pick(&[0, 1, 9, 10, 255, 256, 65_535, 65_536]),
            1 => *self.pick(&[
                u64::from(u32::MAX) - 1,
                u64::from(u32::MAX),
                u64::from(u32::MAX) + 1,
                u64::MAX - 1,
                u64::MAX,
                i64::MAX as u64,
            ]),
            2 => 10u64.pow(self.below(20) as u32),
            3 => self.next_u64() >> self.below(64),
            _ => self.below(100_000) as u64,
        }
    }
}

// ---------------------------------------------------------------------------------
// The case loop

/// How many cases from which seed (environment overrides).
pub struct Settings {
    /// Base seed.
    pub seed: u64,
    /// First case index.
    pub from: u64,
    /// Number of cases.
    pub cases: u64,
}

const DEFAULT_SEED: u64 = 0x7e5f_5eed_0000_0007;
const DEFAULT_CASES: u64 = 1_000_000;

fn env_u64(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    let v = v.trim().replace('_', "");
    let parsed = match v.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => v.parse(),
    };
    Some(parsed.unwrap_or_else(|e| panic!("{name}={v:?}: {e}")))
}

/// The settings from `VEXFS_FUZZ_SEED`, `VEXFS_FUZZ_FROM` and `VEXFS_FUZZ_CASES`.
pub fn settings() -> Settings {
    Settings {
        seed: env_u64("VEXFS_FUZZ_SEED").unwrap_or(DEFAULT_SEED),
        from: env_u64("VEXFS_FUZZ_FROM").unwrap_or(0),
        cases: env_u64("VEXFS_FUZZ_CASES").unwrap_or(DEFAULT_CASES),
    }
}

/// Prints how to rerun the case that was running when the thread panicked.
struct OnPanic<'a> {
    target: &'a str,
    seed: u64,
    case: Cell<u64>,
}

impl Drop for OnPanic<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "fuzz {}: case {} failed (seed {:#x}); rerun it alone with\n  \
                 VEXFS_FUZZ_SEED={:#x} VEXFS_FUZZ_FROM={} VEXFS_FUZZ_CASES=1 \
                 cargo test -p vexfs-tests --test fuzz {} -- --nocapture",
                self.target,
                self.case.get(),
                self.seed,
                self.seed,
                self.case.get(),
                self.target
            );
        }
    }
}

/// Heap a case loop may leave allocated when it ends: the code under test keeps
/// lazily grown caches (the regexes' lazy DFAs hold a few MiB). A leak of even a few
/// bytes per case would pass this over a million cases.
const RETAINED_BOUND: usize = 16 << 20;

/// Runs `case` once per case index with that case's generator, under the panic
/// reporter, measuring time and each case's peak heap; asserts the largest peak stays
/// under `heap_bound` and that the loop leaks nothing.
pub fn run(target: &str, heap_bound: usize, mut case: impl FnMut(&mut Rng)) {
    let s = settings();
    // Split once, before measuring: the seed logs live for the whole process.
    seed_logs();
    let guard = OnPanic {
        target,
        seed: s.seed,
        case: Cell::new(s.from),
    };
    let start = Instant::now();
    let base = LIVE.with(Cell::get);
    // (peak growth over `base`, case index) of the most demanding case.
    let mut worst = (0, s.from);
    for i in s.from..s.from + s.cases {
        guard.case.set(i);
        let before = usize::try_from(LIVE.with(Cell::get) - base).unwrap_or(0);
        let ((), peak) = peak_heap(|| case(&mut Rng::for_case(s.seed, target, i)));
        if before + peak > worst.0 {
            worst = (before + peak, i);
        }
    }
    let elapsed = start.elapsed();
    let retained = usize::try_from(LIVE.with(Cell::get) - base).unwrap_or(0);
    drop(guard);
    eprintln!(
        "fuzz {target}: {} cases in {:.1} s, peak heap {} in case {} (bound {}), \
         retained {}, seed {:#x}",
        s.cases,
        elapsed.as_secs_f64(),
        mib(worst.0),
        worst.1,
        mib(heap_bound),
        mib(retained),
        s.seed
    );
    assert!(
        worst.0 <= heap_bound,
        "fuzz {target}: case {} peaked at {} of heap, over the bound {}",
        worst.1,
        mib(worst.0),
        mib(heap_bound)
    );
    assert!(
        retained <= RETAINED_BOUND,
        "fuzz {target}: {} of heap still allocated after the cases",
        mib(retained)
    );
}

/// Runs one stress input (outside the case loop) and asserts its peak heap bound.
pub fn bounded<R>(target: &str, what: &str, heap_bound: usize, f: impl FnOnce() -> R) -> R {
    let start = Instant::now();
    let (r, peak) = peak_heap(f);
    eprintln!(
        "fuzz {target}: {what}: peak heap {} (bound {}) in {:.1} s",
        mib(peak),
        mib(heap_bound),
        start.elapsed().as_secs_f64()
    );
    assert!(
        peak <= heap_bound,
        "fuzz {target}: {what}: peak heap {} over the bound {}",
        mib(peak),
        mib(heap_bound)
    );
    r
}

/// Polls a future to completion on this thread (the test streams wake nobody: they
/// are always ready again at the next poll).
pub fn block_on<F: Future>(f: F) -> F::Output {
    let mut f = std::pin::pin!(f);
    let mut cx = Context::from_waker(Waker::noop());
    let mut polls = 0u64;
    loop {
        if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
        polls += 1;
        assert!(polls < 1 << 32, "future never finished");
    }
}

// ---------------------------------------------------------------------------------
// A scripted peer for the async readers

/// A byte stream that plays a script: `prefix` bytes of `fill`, then `data`, then EOF
/// (or `fill` forever when `endless`), in reads of random size; a connection reset
/// when `reset_at` bytes have been read; not ready one poll in eight (the readers must
/// resume); writes taken in random pieces.
pub struct Peer<'a> {
    prefix: usize,
    fill: u8,
    data: &'a [u8],
    endless: bool,
    reset_at: Option<usize>,
    /// Bytes read from it so far.
    pub read: usize,
    /// Bytes written to it.
    pub written: Vec<u8>,
    dice: Rng,
}

impl<'a> Peer<'a> {
    /// A peer that sends `data` and closes; its timing comes from `rng`.
    pub fn new(rng: &mut Rng, data: &'a [u8]) -> Peer<'a> {
        Peer {
            prefix: 0,
            fill: b'x',
            data,
            endless: false,
            reset_at: None,
            read: 0,
            written: Vec::new(),
            dice: Rng::for_case(rng.next_u64(), "peer", 0),
        }
    }

    /// Sends `n` bytes of `fill` before the data.
    pub fn prefix(mut self, n: usize, fill: u8) -> Self {
        (self.prefix, self.fill) = (n, fill);
        self
    }

    /// Sends `fill` forever after the data instead of closing.
    pub fn endless(mut self, fill: u8) -> Self {
        (self.endless, self.fill) = (true, fill);
        self
    }

    /// Resets the connection once `at` bytes have been read.
    pub fn reset_at(mut self, at: Option<usize>) -> Self {
        self.reset_at = at;
        self
    }
}

impl AsyncRead for Peer<'_> {
    fn poll_read(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let me = self.get_mut();
        if me.dice.one_in(8) {
            return Poll::Pending;
        }
        if me.reset_at == Some(me.read) {
            return Poll::Ready(Err(io::ErrorKind::ConnectionReset.into()));
        }
        let mut want = match me.dice.below(3) {
            0 => me.dice.range(1, 16),
            1 => me.dice.range(1, 8192),
            _ => usize::MAX,
        }
        .min(buf.remaining())
        .min(me.reset_at.map_or(usize::MAX, |r| r - me.read));
        let end_of_data = me.prefix + me.data.len();
        while want > 0 {
            let at = me.read;
            let n = if at < me.prefix || (me.endless && at >= end_of_data) {
                // Filler: up to the end of the prefix, or without end after the data.
                let n = if at < me.prefix {
                    want.min(me.prefix - at)
                } else {
                    want
                };
                buf.initialize_unfilled_to(n).fill(me.fill);
                buf.advance(n);
                n
            } else if at < end_of_data {
                let from = at - me.prefix;
                let n = want.min(me.data.len() - from);
                buf.put_slice(&me.data[from..from + n]);
                n
            } else {
                break;
            };
            me.read += n;
            want -= n;
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Peer<'_> {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let me = self.get_mut();
        if me.dice.one_in(8) {
            return Poll::Pending;
        }
        let n = me.dice.range(1, buf.len().max(1)).min(buf.len());
        me.written.extend_from_slice(&buf[..n]);
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

// ---------------------------------------------------------------------------------
// Mutators

/// Bytes that make parsers take unusual paths.
pub const ODD_BYTES: &[&[u8]] = &[
    b"\0",
    b"\r",
    b"\r\n",
    b"\n",
    b"\t",
    b"\xff",
    b"\xfe\xff",
    b"\xc3",
    b"\xe2\x82",
    b"\xed\xa0\x80",
    b"\xf4\x90\x80\x80",
    b"\xef\xbb\xbf",
    "\u{2028}".as_bytes(),
    "é".as_bytes(),
    "🦀".as_bytes(),
    b"\x1b[0m",
];

/// Applies one random byte-level mutation; `tokens` are structure words to splice in.
pub fn mutate(rng: &mut Rng, data: &mut Vec<u8>, tokens: &[&[u8]]) {
    let at = |rng: &mut Rng, data: &Vec<u8>| rng.below(data.len() + 1);
    match rng.below(11) {
        0 if !data.is_empty() => {
            let i = rng.below(data.len());
            data[i] ^= 1 << rng.below(8);
        }
        1 if !data.is_empty() => {
            let i = rng.below(data.len());
            data[i] = rng.byte();
        }
        2 => {
            let i = at(rng, data);
            let n = rng.size(16);
            let junk: Vec<u8> = (0..n).map(|_| rng.byte()).collect();
            data.splice(i..i, junk);
        }
        3 if !data.is_empty() => {
            let i = rng.below(data.len());
            let n = rng.size(data.len() - i).max(1);
            data.drain(i..i + n);
        }
        4 if !data.is_empty() => {
            let i = rng.below(data.len());
            let n = rng.size((data.len() - i).min(256)).max(1);
            let copy = data[i..i + n].to_vec();
            let j = at(rng, data);
            data.splice(j..j, copy);
        }
        5 => {
            let n = at(rng, data);
            data.truncate(n);
        }
        6 | 7 => {
            let i = at(rng, data);
            let odd = rng.pick(ODD_BYTES);
            data.splice(i..i, odd.iter().copied());
        }
        8 | 9 if !tokens.is_empty() => {
            let i = at(rng, data);
            let t = rng.pick(tokens);
            data.splice(i..i, t.iter().copied());
        }
        _ => {
            // Swap two ranges' order by rotating a window.
            if data.len() > 2 {
                let i = rng.below(data.len() - 1);
                let j = rng.range(i + 1, data.len());
                let k = rng.range(i, j);
                data[i..j].rotate_left(k - i);
            }
        }
    }
}

/// Random cut points splitting `len` bytes into chunks: mostly small chunks,
/// sometimes single bytes, sometimes few large ones.
pub fn chunk_sizes(rng: &mut Rng, len: usize) -> Vec<usize> {
    let mut cuts = Vec::new();
    let mut left = len;
    let style = rng.below(4);
    while left > 0 {
        let n = match style {
            0 if len <= 1024 => 1,
            1 if len <= 8192 => rng.range(1, 8),
            2 => rng.size(left).max(1),
            _ => rng.range(1, 4096),
        }
        .min(left);
        cuts.push(n);
        left -= n;
    }
    cuts
}

// ---------------------------------------------------------------------------------
// Seeds

/// The real console logs: our guest kernels' crashes (the classifier fixtures) and
/// one syzkaller log per crash kind (tests/fuzz-seeds).
pub const LOGS: &[&[u8]] = &[
    include_bytes!("../../../controller/tests/fixtures/guest-logs/crash-61-bug.log"),
    include_bytes!("../../../controller/tests/fixtures/guest-logs/crash-61-deadlock.log"),
    include_bytes!("../../../controller/tests/fixtures/guest-logs/crash-61-null.log"),
    include_bytes!("../../../controller/tests/fixtures/guest-logs/crash-61-panic.log"),
    include_bytes!("../../../controller/tests/fixtures/guest-logs/crash-61-softlockup.log"),
    include_bytes!("../../../controller/tests/fixtures/guest-logs/crash-61-warn.log"),
    include_bytes!("../../../controller/tests/fixtures/guest-logs/crash-612-bug.log"),
    include_bytes!("../../../controller/tests/fixtures/guest-logs/crash-612-deadlock.log"),
    include_bytes!("../../../controller/tests/fixtures/guest-logs/crash-612-kfence_oob.log"),
    include_bytes!("../../../controller/tests/fixtures/guest-logs/crash-612-kfence_uaf.log"),
    include_bytes!("../../../controller/tests/fixtures/guest-logs/crash-612-leak.log"),
    include_bytes!("../../../controller/tests/fixtures/guest-logs/crash-612-null.log"),
    include_bytes!("../../../controller/tests/fixtures/guest-logs/crash-612-softlockup.log"),
    include_bytes!("../../../controller/tests/fixtures/guest-logs/crash-612-thread_deadlock.log"),
    include_bytes!("../../../controller/tests/fixtures/guest-logs/lkdtm-61-HUNG_TASK.log"),
    include_bytes!("../../../controller/tests/fixtures/guest-logs/lkdtm-612-EXCEPTION.log"),
    include_bytes!("../../../controller/tests/fixtures/guest-logs/pvpanic-612-null-oopspanic.log"),
    include_bytes!("../../fuzz-seeds/syzkaller-atomic-context-81.log"),
    include_bytes!("../../fuzz-seeds/syzkaller-bad-access-146.log"),
    include_bytes!("../../fuzz-seeds/syzkaller-bad-page-729.log"),
    include_bytes!("../../fuzz-seeds/syzkaller-data-race-427.log"),
    include_bytes!("../../fuzz-seeds/syzkaller-gpf-162.log"),
    include_bytes!("../../fuzz-seeds/syzkaller-hung-task-72.log"),
    include_bytes!("../../fuzz-seeds/syzkaller-kasan-109.log"),
    include_bytes!("../../fuzz-seeds/syzkaller-kernel-bug-113.log"),
    include_bytes!("../../fuzz-seeds/syzkaller-kfence-590.log"),
    include_bytes!("../../fuzz-seeds/syzkaller-kmemleak-51.log"),
    include_bytes!("../../fuzz-seeds/syzkaller-kmsan-626.log"),
    include_bytes!("../../fuzz-seeds/syzkaller-lock-misuse-116.log"),
    include_bytes!("../../fuzz-seeds/syzkaller-lockdep-26.log"),
    include_bytes!("../../fuzz-seeds/syzkaller-none-262.log"),
    include_bytes!("../../fuzz-seeds/syzkaller-nonutf8-620.log"),
    include_bytes!("../../fuzz-seeds/syzkaller-null-deref-112.log"),
    include_bytes!("../../fuzz-seeds/syzkaller-oops-241.log"),
    include_bytes!("../../fuzz-seeds/syzkaller-panic-47.log"),
    include_bytes!("../../fuzz-seeds/syzkaller-rcu-stall-145.log"),
    include_bytes!("../../fuzz-seeds/syzkaller-refcount-159.log"),
    include_bytes!("../../fuzz-seeds/syzkaller-soft-lockup-65.log"),
    include_bytes!("../../fuzz-seeds/syzkaller-spinlock-68.log"),
    include_bytes!("../../fuzz-seeds/syzkaller-stack-316.log"),
    include_bytes!("../../fuzz-seeds/syzkaller-ubsan-453.log"),
    include_bytes!("../../fuzz-seeds/syzkaller-usercopy-122.log"),
    include_bytes!("../../fuzz-seeds/syzkaller-warning-4.log"),
];

/// A seed log split into lines, with the lines where the classifier opens a report
/// (windows start near them more often than not).
pub struct SeedLog {
    /// The lines, without their newlines.
    pub lines: Vec<&'static [u8]>,
    /// Indexes of report headers.
    pub headers: Vec<usize>,
}

/// The seed logs, split once.
pub fn seed_logs() -> &'static [SeedLog] {
    static LOGS_SPLIT: OnceLock<Vec<SeedLog>> = OnceLock::new();
    LOGS_SPLIT.get_or_init(|| {
        LOGS.iter()
            .map(|log| SeedLog {
                lines: log.split(|&b| b == b'\n').collect(),
                headers: vexfs_controller::classify::classify(log)
                    .iter()
                    .map(|r| r.start_line)
                    .collect(),
            })
            .collect()
    })
}

/// A random run of consecutive seed lines (mostly starting a little before a crash
/// header), newline-terminated.
pub fn seed_window(rng: &mut Rng, max_lines: usize) -> Vec<&'static [u8]> {
    let log = rng.pick(seed_logs());
    let start = match log.headers.is_empty() || rng.one_in(4) {
        true => rng.below(log.lines.len()),
        false => rng.pick(&log.headers).saturating_sub(rng.size(6)),
    };
    // Half whole reports, half short runs (cheap, and most boundary cases need few lines).
    let n = match rng.one_in(2) {
        true => rng.range(1, max_lines),
        false => 1 + rng.size(max_lines - 1),
    };
    log.lines[start..(start + n).min(log.lines.len())].to_vec()
}

/// The message of a console line: its `[ 12.345]` timestamps and `[ T12]` caller
/// ids removed (kmsg records carry those in their header instead).
pub fn message_of(line: &[u8]) -> &[u8] {
    let mut s = line;
    loop {
        let t = s.trim_ascii_start();
        if t.first() != Some(&b'[') {
            return s;
        }
        match t.iter().position(|&b| b == b']') {
            Some(end) if end < 20 => {
                s = &t[end + 1..];
                s = s.strip_prefix(b" ").unwrap_or(s);
            }
            _ => return s,
        }
    }
}

// ---------------------------------------------------------------------------------
// Failure messages

/// `Debug` text cut to a readable length (inputs can be megabytes).
pub fn short(v: &impl std::fmt::Debug) -> String {
    let s = format!("{v:?}");
    match s.char_indices().nth(600) {
        Some((i, _)) => format!("{}... ({} bytes)", &s[..i], s.len()),
        None => s,
    }
}

/// Asserts two sequences are equal, naming the first difference.
pub fn assert_same<T: PartialEq + std::fmt::Debug>(got: &[T], want: &[T], what: &str) {
    if got == want {
        return;
    }
    let i = got.iter().zip(want).take_while(|(g, w)| g == w).count();
    panic!(
        "{what}: {} items, expected {}; first difference at {i}:\n  got  {}\n  want {}",
        got.len(),
        want.len(),
        got.get(i).map(short).unwrap_or_else(|| "(end)".into()),
        want.get(i).map(short).unwrap_or_else(|| "(end)".into()),
    );
}

//! Module control: /proc/modules, finit_module and delete_module with deadlines.
//!
//! delete_module can block forever in the kernel (after an oops in the module, its exit
//! path waits on a lock the dead task held), so every kernel call runs on a thread of
//! its own and the RPC waits with a deadline; a hung call is reported, never joined.

use std::ffi::CString;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::kmod::{DeleteModuleFlags, ModuleInitFlags};
use vexfs_proto::{Module, ModuleOutcome, ModuleReply};

/// Longest parameter string accepted (the kernel's own limit is a page).
const MAX_PARAMS: usize = 4096;
/// Longest module path accepted (PATH_MAX).
const MAX_PATH: usize = 4096;
/// Longest deadline accepted for an unload.
const MAX_DEADLINE: Duration = Duration::from_secs(600);
/// How long the reload's "verify live" step waits for the module to leave `Loading`.
const VERIFY_WAIT: Duration = Duration::from_secs(5);

/// Errors of module control that are the caller's fault or the agent's environment's.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The path is not absolute.
    #[error("module path must be absolute: {0}")]
    NotAbsolute(String),
    /// The path resolves outside every allow-listed directory.
    #[error("module path {path} is outside the allowed directories ({allowed})")]
    NotAllowed {
        /// The path as given.
        path: String,
        /// The allow-list, for the message.
        allowed: String,
    },
    /// The path names a directory, FIFO, device or socket.
    #[error("module path {0} is not a regular file")]
    NotRegular(String),
    /// The module file cannot be opened.
    #[error("cannot open module {path}: {source}")]
    Open {
        /// The path as given.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// A bad name or parameter string.
    #[error("invalid argument: {0}")]
    Invalid(String),
    /// /proc/modules cannot be read.
    #[error("cannot read {path}: {source}")]
    ProcModules {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

/// Module control over one /proc tree with an allow-list of module directories.
#[derive(Debug, Clone)]
pub struct Control {
    proc: PathBuf,
    allowed: Arc<Vec<PathBuf>>,
    default_deadline: Duration,
    /// Kernel calls that never returned (threads stuck in the kernel).
    hung_calls: Arc<AtomicU32>,
}

impl Control {
    /// Control over `proc`, accepting modules under `allowed` directories.
    pub fn new(proc: PathBuf, allowed: Vec<PathBuf>, default_deadline: Duration) -> Self {
        // Canonicalise once so a symlinked allow-list entry still matches.
        let allowed = allowed
            .into_iter()
            .map(|p| std::fs::canonicalize(&p).unwrap_or(p))
            .collect();
        Self {
            proc,
            allowed: Arc::new(allowed),
            default_deadline,
            hung_calls: Arc::new(AtomicU32::new(0)),
        }
    }

    /// Number of kernel calls that are still stuck.
    pub fn hung_calls(&self) -> u32 {
        self.hung_calls.load(Ordering::Relaxed)
    }

    /// Reads /proc/modules.
    pub fn list(&self) -> Result<Vec<Module>, Error> {
        let path = self.proc.join("modules");
        let text = std::fs::read(&path).map_err(|source| Error::ProcModules { path, source })?;
        Ok(parse_proc_modules(&String::from_utf8_lossy(&text)))
    }

    fn find(&self, name: &str) -> Option<Module> {
        self.list().ok()?.into_iter().find(|m| m.name == name)
    }

    /// Checks a path against the allow-list, resolving `..` and symlinks first.
    pub fn check_path(&self, path: &str) -> Result<PathBuf, Error> {
        if path.is_empty() {
            return Err(Error::Invalid("module path is empty".into()));
        }
        if path.len() > MAX_PATH {
            return Err(Error::Invalid(format!(
                "module path is {} bytes, longer than {MAX_PATH}",
                path.len()
            )));
        }
        if path.contains('\0') {
            return Err(Error::Invalid("module path holds a NUL byte".into()));
        }
        let p = Path::new(path);
        if !p.is_absolute() {
            return Err(Error::NotAbsolute(path.to_string()));
        }
        match std::fs::canonicalize(p) {
            Ok(real) if self.allows(&real) => Ok(real),
            // A path that does not resolve is judged by its text: a missing file outside
            // the allowed directories is refused as outside, not reported as missing.
            Err(source) if self.allows(&lexically_normal(p)) => Err(Error::Open {
                path: path.to_string(),
                source,
            }),
            Ok(_) | Err(_) => Err(Error::NotAllowed {
                path: path.to_string(),
                allowed: self
                    .allowed
                    .iter()
                    .map(|d| d.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
            }),
        }
    }

    fn allows(&self, real: &Path) -> bool {
        self.allowed.iter().any(|dir| real.starts_with(dir))
    }

    /// Opens a checked module file. O_NONBLOCK: opening a FIFO planted in an allowed
    /// directory must not block the handler; the fstat then refuses it.
    fn open_checked(real: &Path, path: &str) -> Result<std::fs::File, Error> {
        use std::os::unix::fs::OpenOptionsExt;
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_NOFOLLOW)
            .open(real)
            .map_err(|source| Error::Open {
                path: path.to_string(),
                source,
            })?;
        match file.metadata() {
            Ok(m) if m.is_file() => Ok(file),
            Ok(_) => Err(Error::NotRegular(path.to_string())),
            Err(source) => Err(Error::Open {
                path: path.to_string(),
                source,
            }),
        }
    }

    /// Loads a module with finit_module.
    pub async fn load(&self, path: &str, params: &str) -> Result<ModuleReply, Error> {
        let started = Instant::now();
        let real = self.check_path(path)?;
        let params = check_params(params)?;
        let file = Self::open_checked(&real, path)?;
        // Module init runs in the calling thread and can hang too: same deadline guard.
        let call = move || nix::kmod::finit_module(&file, &params, ModuleInitFlags::empty());
        let outcome = self.guarded(call, self.default_deadline).await;
        let name = module_name_of(&real);
        Ok(self.reply(outcome, "load", name.as_deref(), started))
    }

    /// Unloads a module, waiting at most `deadline` (0: the default).
    pub async fn unload(
        &self,
        name: &str,
        deadline: Duration,
        force: bool,
    ) -> Result<ModuleReply, Error> {
        let started = Instant::now();
        let cname = check_name(name)?;
        let deadline = self.deadline(deadline);
        let mut flags = DeleteModuleFlags::O_NONBLOCK;
        if force {
            flags |= DeleteModuleFlags::O_TRUNC;
        }
        let outcome = self
            .guarded(move || nix::kmod::delete_module(&cname, flags), deadline)
            .await;
        let busy = matches!(outcome, Some(Err(Errno::EAGAIN | Errno::EBUSY)));
        let mut reply = self.reply(outcome, "unload", Some(name), started);
        // O_NONBLOCK turns "in use" into EAGAIN, whose text ("Try again") misleads.
        if busy && let Some(m) = &reply.module {
            let holders = if m.holders.is_empty() {
                String::new()
            } else {
                format!(", held by {}", m.holders.join(", "))
            };
            reply.detail = format!(
                "unload: {name} is in use (refcount {}{holders}): unmount it or stop its users first",
                m.refcount
            );
        }
        if reply.outcome == ModuleOutcome::Ok as i32 && reply.module.is_some() {
            reply.outcome = ModuleOutcome::VerifyFailed as i32;
            reply.detail = format!("{name} is still listed in /proc/modules after unload");
        }
        Ok(reply)
    }

    /// Unload, verify gone, load, verify live.
    pub async fn reload(
        &self,
        name: &str,
        path: &str,
        params: &str,
        deadline: Duration,
    ) -> Result<ModuleReply, Error> {
        let started = Instant::now();
        // Validate everything before touching the running module.
        check_name(name)?;
        let real = self.check_path(path)?;
        Self::open_checked(&real, path)?;
        check_params(params)?;
        if self.find(name).is_some() {
            let r = self.unload(name, deadline, false).await?;
            if r.outcome != ModuleOutcome::Ok as i32 {
                return Ok(ModuleReply {
                    detail: format!("reload: unload step: {}", r.detail),
                    duration_ms: ms(started.elapsed()),
                    ..r
                });
            }
        }
        let mut r = self.load(path, params).await?;
        if r.outcome == ModuleOutcome::Ok as i32 {
            let until = Instant::now() + VERIFY_WAIT;
            loop {
                match self.find(name) {
                    Some(m) if m.state == "Live" => {
                        r.module = Some(m);
                        break;
                    }
                    _ if Instant::now() >= until => {
                        r.outcome = ModuleOutcome::VerifyFailed as i32;
                        r.detail = format!("{name} is not Live after load");
                        break;
                    }
                    _ => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            }
        } else {
            r.detail = format!("reload: load step: {}", r.detail);
        }
        r.duration_ms = ms(started.elapsed());
        Ok(r)
    }

    fn deadline(&self, d: Duration) -> Duration {
        if d.is_zero() {
            self.default_deadline
        } else {
            d.min(MAX_DEADLINE)
        }
    }

    /// Runs a kernel call on its own thread; None when it did not return in time.
    async fn guarded<F>(&self, call: F, deadline: Duration) -> Option<Result<(), Errno>>
    where
        F: FnOnce() -> nix::Result<()> + Send + 'static,
    {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let hung = self.hung_calls.clone();
        let spawned = std::thread::Builder::new()
            .name("kmod".into())
            .stack_size(64 * 1024)
            .spawn(move || {
                let _ = tx.send(call());
            });
        if let Err(e) = spawned {
            return Some(Err(Errno::from_raw(
                e.raw_os_error().unwrap_or(libc::EAGAIN),
            )));
        }
        match tokio::time::timeout(deadline, rx).await {
            Ok(Ok(result)) => Some(result),
            Ok(Err(_)) => Some(Err(Errno::EIO)),
            Err(_) => {
                hung.fetch_add(1, Ordering::Relaxed);
                None
            }
        }
    }

    fn reply(
        &self,
        outcome: Option<Result<(), Errno>>,
        op: &str,
        name: Option<&str>,
        started: Instant,
    ) -> ModuleReply {
        let module = name.and_then(|n| self.find(n));
        let (outcome, detail) = outcome_of(op, outcome, name);
        ModuleReply {
            outcome: outcome as i32,
            module,
            duration_ms: ms(started.elapsed()),
            detail,
        }
    }
}

/// What a kernel call's result means: `None` is a call that did not return in time.
/// EEXIST from a load is its own outcome (the module is there already), so callers
/// need not read the detail text.
fn outcome_of(
    op: &str,
    outcome: Option<Result<(), Errno>>,
    name: Option<&str>,
) -> (ModuleOutcome, String) {
    match outcome {
        Some(Ok(())) => (ModuleOutcome::Ok, String::new()),
        Some(Err(Errno::EEXIST)) if op == "load" => (
            ModuleOutcome::AlreadyLoaded,
            format!(
                "load: a module named {} is already loaded",
                name.unwrap_or("?")
            ),
        ),
        Some(Err(e)) => (ModuleOutcome::Failed, format!("{op}: {}", e.desc())),
        None => (
            ModuleOutcome::Hung,
            format!("{op} did not return within the deadline; the call is stuck in the kernel"),
        ),
    }
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Checks a module name: 1 to 55 letters, digits, '_' or '-'.
pub fn check_name(name: &str) -> Result<CString, Error> {
    let ok = !name.is_empty()
        && name.len() < 56 // MODULE_NAME_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if !ok {
        return Err(Error::Invalid(format!(
            "module name {name:?} must be 1 to 55 letters, digits, '_' or '-'"
        )));
    }
    CString::new(name).map_err(|_| Error::Invalid("module name holds NUL".into()))
}

fn check_params(params: &str) -> Result<CString, Error> {
    if params.len() > MAX_PARAMS {
        return Err(Error::Invalid(format!(
            "module parameters are {} bytes, longer than {MAX_PARAMS}",
            params.len()
        )));
    }
    // The kernel splits parameters at whitespace; other control bytes (NUL, escapes)
    // are never meant and would end up in its log.
    let odd = params
        .bytes()
        .position(|b| b.is_ascii_control() && !matches!(b, b' ' | b'\t' | b'\n'));
    if let Some(at) = odd {
        return Err(Error::Invalid(format!(
            "module parameters hold control byte {:#04x} at offset {at}",
            params.as_bytes()[at]
        )));
    }
    CString::new(params).map_err(|_| Error::Invalid("module parameters hold NUL".into()))
}

/// `path` with `.` and `..` resolved by text alone (no symlinks): for paths that do not
/// exist, where the kernel would follow no symlink either.
fn lexically_normal(path: &Path) -> PathBuf {
    use std::path::Component;
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

/// The kernel's name for a module file: the file stem with '-' turned into '_'.
pub fn module_name_of(path: &Path) -> Option<String> {
    let file = path.file_name()?.to_str()?;
    let stem = file.split('.').next()?;
    Some(stem.replace('-', "_"))
}

/// Parses /proc/modules: `name size refcount holders state address [(taint)]`.
pub fn parse_proc_modules(text: &str) -> Vec<Module> {
    text.lines()
        .filter_map(|line| {
            let mut f = line.split_whitespace();
            let name = f.next()?.to_string();
            let size = f.next()?.parse().ok()?;
            let refcount = f.next().map(|r| r.parse().unwrap_or(-1))?;
            let holders = f
                .next()?
                .split(',')
                .filter(|h| !h.is_empty() && *h != "-")
                .map(str::to_string)
                .collect();
            let state = f.next()?.to_string();
            let address = f
                .next()
                .and_then(|a| u64::from_str_radix(a.trim_start_matches("0x"), 16).ok())
                .unwrap_or(0);
            let taint = f
                .next()
                .map(|t| t.trim_matches(|c| c == '(' || c == ')').to_string())
                .unwrap_or_default();
            Some(Module {
                name,
                size,
                refcount,
                holders,
                state,
                taint,
                address,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_modules_parsed() {
        let m = parse_proc_modules(
            "vexfs 24576 1 - Live 0xffffffffc0a00000 (OE)\n\
             vsock 57344 2 vmw_vsock_virtio_transport_common,vmw_vsock_virtio_transport, Live 0x0\n\
             broken\n",
        );
        assert_eq!(m.len(), 2);
        assert_eq!(m[0].taint, "OE");
        assert_eq!(m[0].refcount, 1);
        assert!(m[0].holders.is_empty());
        assert_eq!(m[1].holders.len(), 2);
        assert_eq!(m[1].taint, "");
    }

    #[test]
    fn eexist_on_load_is_already_loaded() {
        let (o, detail) = outcome_of("load", Some(Err(Errno::EEXIST)), Some("vexfs"));
        assert_eq!(o, ModuleOutcome::AlreadyLoaded);
        assert_eq!(detail, "load: a module named vexfs is already loaded");
        // Other errors, and EEXIST from anything but a load, stay failures.
        let (o, detail) = outcome_of("load", Some(Err(Errno::ENOEXEC)), Some("vexfs"));
        assert_eq!(
            (o, detail.as_str()),
            (ModuleOutcome::Failed, "load: Exec format error")
        );
        assert_eq!(
            outcome_of("unload", Some(Err(Errno::EEXIST)), Some("vexfs")).0,
            ModuleOutcome::Failed
        );
        assert_eq!(outcome_of("load", Some(Ok(())), None).0, ModuleOutcome::Ok);
        assert_eq!(outcome_of("unload", None, None).0, ModuleOutcome::Hung);
    }

    #[test]
    fn names_and_params_checked() {
        assert!(check_name("vexfs").is_ok());
        assert!(check_name("").is_err());
        assert!(check_name("../x").is_err());
        assert!(check_params(&"a".repeat(MAX_PARAMS + 1)).is_err());
        assert!(check_params("a\0b").is_err());
        assert!(check_params("a=1\tb=2\nc=\"x y\" d=\u{e9}").is_ok());
        for odd in ["a=\x1b[31m", "a=1\rb=2", "\x7f"] {
            let Err(Error::Invalid(msg)) = check_params(odd) else {
                panic!("{odd:?} accepted");
            };
            assert!(msg.contains("control byte"), "{msg}");
        }
        assert_eq!(
            module_name_of(Path::new("/x/vmw-vsock.ko")).as_deref(),
            Some("vmw_vsock")
        );
    }

    #[test]
    fn allow_list_resolves_traversal() {
        let dir = tempfile::tempdir().unwrap();
        let allowed = dir.path().join("mods");
        std::fs::create_dir(&allowed).unwrap();
        std::fs::write(allowed.join("a.ko"), b"").unwrap();
        std::fs::write(dir.path().join("evil.ko"), b"").unwrap();
        let c = Control::new(
            "/proc".into(),
            vec![allowed.clone()],
            Duration::from_secs(1),
        );
        assert!(c.check_path(allowed.join("a.ko").to_str().unwrap()).is_ok());
        let sneaky = format!("{}/../evil.ko", allowed.display());
        assert!(matches!(
            c.check_path(&sneaky),
            Err(Error::NotAllowed { .. })
        ));
        assert!(matches!(c.check_path("rel.ko"), Err(Error::NotAbsolute(_))));
        // Missing files: outside the allow-list is refused as outside, inside is missing.
        let missing_out = format!("{}/../nowhere/x.ko", allowed.display());
        assert!(matches!(
            c.check_path(&missing_out),
            Err(Error::NotAllowed { .. })
        ));
        let missing_in = allowed.join("gone.ko");
        assert!(matches!(
            c.check_path(missing_in.to_str().unwrap()),
            Err(Error::Open { source, .. }) if source.kind() == std::io::ErrorKind::NotFound
        ));
        // A sibling whose name merely starts like the allowed dir is outside.
        let sibling = dir.path().join("mods-evil");
        std::fs::create_dir(&sibling).unwrap();
        std::fs::write(sibling.join("a.ko"), b"").unwrap();
        assert!(matches!(
            c.check_path(sibling.join("a.ko").to_str().unwrap()),
            Err(Error::NotAllowed { .. })
        ));
        for bad in ["", "/a\0b.ko"] {
            assert!(
                matches!(c.check_path(bad), Err(Error::Invalid(_))),
                "{bad:?}"
            );
        }
        let long = format!("/{}", "a".repeat(MAX_PATH));
        assert!(matches!(c.check_path(&long), Err(Error::Invalid(_))));
    }

    #[test]
    fn only_regular_files_are_opened() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo.ko");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        // Without O_NONBLOCK this open would wait for a writer forever.
        assert!(matches!(
            Control::open_checked(&fifo, "fifo.ko"),
            Err(Error::NotRegular(_))
        ));
        assert!(matches!(
            Control::open_checked(dir.path(), "dir"),
            Err(Error::NotRegular(_))
        ));
        std::fs::write(dir.path().join("a.ko"), b"x").unwrap();
        assert!(Control::open_checked(&dir.path().join("a.ko"), "a.ko").is_ok());
    }
}

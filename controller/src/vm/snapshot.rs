//! Booted-guest snapshots: a clean guest in half a second instead of a cold boot.
//!
//! QEMU refuses to migrate while a vhost-user-vsock device exists (it is marked
//! unmigratable), so the vsock device sits on a hot-pluggable PCIe root port
//! ([`VsockSlot::RootPort`]). To take a snapshot: boot, wait for the agent (transport
//! modules in, nothing else loaded, kernel untainted), unplug the device, pause, and
//! migrate the whole machine to a file with `exec:cat > state`. To restore: start
//! QEMU with the same arguments but without the device and with `-incoming defer`
//! ([`VsockSlot::Incoming`]), `migrate-incoming exec:cat state`, then plug the
//! device back in (a vhost-device-vsock daemon of the new VM's own) and wait for the
//! agent, whose listener survives the device going and coming back.
//!
//! A restored guest has the snapshot's boot id, so after every restore the host
//! writes a fresh *restore generation* into the guest (`/run/vexfs/restore-generation`,
//! reported by Health): [`fresh_state`] tells a new guest from the old one with it.
//!
//! Snapshots live in `<cache>/snapshots/<name>-<key>/` (`state`, `meta.json`), keyed by
//! a hash of the image files' contents, the QEMU binary and the QEMU arguments; a
//! snapshot whose images changed is removed when the new one is taken, and one that
//! fails to restore is removed and rebuilt by [`restore_or_boot`].
//!
//! Disks: a restored guest's page cache holds the blocks it read before the snapshot.
//! When a disk can change between snapshot and restore (disks kept across restarts),
//! call [`drop_block_caches`] on it after the restore and before mounting it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{LazyLock, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use serde_json::json;
use vexfs_proto::{ExecRequest, HealthReply};

use super::migration::{MigrationStatus, exec_uri};
use super::qemu::{self, ROOT_PORT_ID, VSOCK_CHARDEV_ID, VSOCK_DEVICE_ID};
use super::vsock_backend::VsockPlan;
use super::{Accel, Vm, VmConfig, VmError, VsockSlot, fnv1a, image};
use crate::client::{AgentClient, ClientError};
use crate::transport::Address;

/// Where the host writes the restore generation in the guest (the agent's
/// `restore::GENERATION_FILE`).
pub const GENERATION_FILE: &str = "/run/vexfs/restore-generation";
/// The snapshot's machine state inside its folder.
pub const STATE_FILE: &str = "state";
/// The snapshot's description inside its folder.
pub const META_FILE: &str = "meta.json";
/// How long taking a snapshot may wait for the migration to the file.
const SAVE_TIMEOUT: Duration = Duration::from_secs(120);
/// How long unplugging the vsock device may take.
const UNPLUG_TIMEOUT: Duration = Duration::from_secs(10);
/// Taint letters a snapshot must not have: dirty (D W L B M) or an out-of-tree
/// module loaded (O: the module under test must not be in the snapshot).
const UNCLEAN_TAINT: &[char] = &['D', 'W', 'L', 'B', 'M', 'O'];
/// How long a restored agent gets to answer once its vsock device started (1.3 s at
/// worst measured on a loaded machine; a wedged daemon never answers).
const AGENT_WINDOW: Duration = Duration::from_secs(15);

/// Snapshot failures.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// The VM failed (launch, QEMU exit, QMP, agent).
    #[error(transparent)]
    Vm(#[from] VmError),
    /// A file of the snapshot store.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The configuration cannot be snapshotted.
    #[error("cannot snapshot this guest: {0}")]
    Unsupported(String),
    /// The guest to snapshot was not clean.
    #[error("guest not clean for a snapshot: {0}")]
    NotClean(String),
    /// Saving or loading the machine state failed.
    #[error("{stage} failed: {detail}")]
    Migration {
        /// `save` or `restore`.
        stage: &'static str,
        /// QEMU's reason.
        detail: String,
    },
    /// The restored agent never answered. vhost-device-vsock 0.3 can wedge on a
    /// connection racing the hot-plugged device's start (seen in about 1 restore of 10
    /// under heavy load), so the snapshot itself may be fine: retry, keep it.
    #[error("restored agent did not answer: {0}")]
    AgentSilent(String),
    /// The restored agent did not take the new generation.
    #[error("restored agent reports generation {got}, expected {want}")]
    Generation {
        /// What the agent reported.
        got: u64,
        /// What the host wrote.
        want: u64,
    },
}

impl From<super::qmp::QmpError> for SnapshotError {
    fn from(e: super::qmp::QmpError) -> Self {
        SnapshotError::Vm(VmError::Qmp(e))
    }
}

impl From<ClientError> for SnapshotError {
    fn from(e: ClientError) -> Self {
        SnapshotError::Vm(VmError::Agent(e))
    }
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> SnapshotError {
    let what = what.into();
    move |source| SnapshotError::Io { what, source }
}

/// The identity of a snapshot: which guest (name) and which exact inputs (hashes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotKey {
    /// The guest's name, made safe for a folder name.
    pub name: String,
    /// Hash of the image files' contents.
    pub image: u64,
    /// Hash of everything: images, QEMU binary, QEMU arguments, accelerator.
    pub full: u64,
}

impl SnapshotKey {
    /// The snapshot's folder name.
    pub fn dir_name(&self) -> String {
        format!("{}-{:016x}", self.name, self.full)
    }
}

/// What `meta.json` says about a snapshot.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Meta {
    /// [`SnapshotKey::full`] in hex.
    pub key: String,
    /// [`SnapshotKey::image`] in hex.
    pub image: String,
    /// The guest kernel release.
    pub kernel_release: String,
    /// The snapshot's boot id (every restore has it).
    pub boot_id: String,
    /// The accelerator it was taken under (restores must use the same).
    pub accel: String,
    /// Size of the state file, bytes.
    pub state_bytes: u64,
    /// Seconds taken from QEMU start to the state file written.
    pub build_secs: f64,
}

/// A snapshot on disk.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// Its folder.
    pub dir: PathBuf,
    /// Its description.
    pub meta: Meta,
}

impl Snapshot {
    /// The machine state file.
    pub fn state(&self) -> PathBuf {
        self.dir.join(STATE_FILE)
    }
}

/// A file as of one version: path, size, mtime seconds and nanoseconds.
type FileVersion = (PathBuf, u64, i64, i64);

/// Content hashes of image files, by version: each is read once per process.
static CONTENT_HASHES: LazyLock<Mutex<HashMap<FileVersion, u64>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));

fn content_hash(path: &Path) -> Result<u64, SnapshotError> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).map_err(io(format!("stat {}", path.display())))?;
    let id = (path.to_path_buf(), m.size(), m.mtime(), m.mtime_nsec());
    let mut memo = CONTENT_HASHES.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(h) = memo.get(&id) {
        return Ok(*h);
    }
    let bytes = std::fs::read(path).map_err(io(format!("read {}", path.display())))?;
    let h = fnv1a(&bytes);
    memo.insert(id, h);
    Ok(h)
}

/// The QEMU binary's identity (path, size, mtime): a QEMU update invalidates snapshots.
fn binary_identity(program: &Path) -> String {
    use std::os::unix::fs::MetadataExt;
    let found = if program.components().count() > 1 {
        Some(program.to_path_buf())
    } else {
        let path = std::env::var_os("PATH").unwrap_or_default();
        std::env::split_paths(&path)
            .map(|d| d.join(program))
            .find(|p| p.is_file())
    };
    match found.and_then(|p| std::fs::metadata(&p).ok().map(|m| (p, m))) {
        Some((p, m)) => format!("{}|{}|{}", p.display(), m.size(), m.mtime()),
        None => program.display().to_string(),
    }
}

/// The QEMU arguments of `cfg`'s snapshot source with per-VM paths fixed, so every
/// VM of the same configuration gets the same key. Disk files are fresh per test, so a
/// disk counts by its name (and, in [`snapshot_key`], size), not by its file's path.
pub fn key_argv(cfg: &VmConfig, accel: Accel) -> Vec<String> {
    let run = Path::new("/run/vexfs-snapshot");
    let mut c = cfg.clone();
    c.vsock_slot = VsockSlot::RootPort;
    for d in &mut c.disks {
        d.path = run.join("disks").join(format!("{}.img", d.name));
    }
    let plan = c.vsock.resolve(run, c.guest_cid);
    qemu::build_argv(&c, accel, &plan, &run.join("qmp.sock"))
        .iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect()
}

/// The key of `cfg`'s snapshot under `accel` (reads the image files once per process).
pub fn snapshot_key(cfg: &VmConfig, accel: Accel) -> Result<SnapshotKey, SnapshotError> {
    let mut image = format!("{:016x}", content_hash(&cfg.kernel)?);
    if let Some(initrd) = &cfg.initramfs {
        image.push_str(&format!("|{:016x}", content_hash(initrd)?));
    }
    let image_hash = fnv1a(image.as_bytes());
    let all = format!(
        "{image}|{}|{}|{}|{}",
        binary_identity(&cfg.qemu_binary),
        accel.as_str(),
        key_argv(cfg, accel).join("\u{1f}"),
        disk_sizes(cfg)?
    );
    let name: String = cfg
        .name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '_' {
                c
            } else {
                '-'
            }
        })
        .collect();
    Ok(SnapshotKey {
        name,
        image: image_hash,
        full: fnv1a(all.as_bytes()),
    })
}

/// The disks' names and sizes (all raw), the part of a disk a snapshot depends on: the
/// guest's block layer saw that size when the snapshot was taken.
fn disk_sizes(cfg: &VmConfig) -> Result<String, SnapshotError> {
    let mut out = String::new();
    for d in &cfg.disks {
        let m =
            std::fs::metadata(&d.path).map_err(io(format!("stat disk {}", d.path.display())))?;
        out.push_str(&format!("{}={}:raw;", d.name, m.len()));
    }
    Ok(out)
}

/// The snapshot folder root of a configuration: `<cache>/snapshots`.
pub fn store_root(cfg: &VmConfig) -> PathBuf {
    cfg.cache_dir
        .clone()
        .unwrap_or_else(image::cache_dir)
        .join("snapshots")
}

/// The snapshot for `key` under `root`, when a complete one exists.
pub fn find(root: &Path, key: &SnapshotKey) -> Option<Snapshot> {
    let dir = root.join(key.dir_name());
    let meta: Meta = serde_json::from_slice(&std::fs::read(dir.join(META_FILE)).ok()?).ok()?;
    let state_ok = std::fs::metadata(dir.join(STATE_FILE)).is_ok_and(|m| m.len() > 0);
    (meta.key == format!("{:016x}", key.full) && state_ok).then_some(Snapshot { dir, meta })
}

/// Removes a snapshot's folder (a corrupt or stale snapshot).
pub fn discard(snap: &Snapshot) {
    if let Err(e) = std::fs::remove_dir_all(&snap.dir) {
        tracing::warn!(error = %e, dir = %snap.dir.display(), "snapshot not removed");
    }
}

/// Removes the other snapshots of the same guest name whose images differ.
fn remove_stale(root: &Path, key: &SnapshotKey) {
    let Ok(entries) = std::fs::read_dir(root) else {
        return;
    };
    let prefix = format!("{}-", key.name);
    let image = format!("{:016x}", key.image);
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name == key.dir_name() || !name.starts_with(&prefix) {
            continue;
        }
        let meta: Option<Meta> = std::fs::read(e.path().join(META_FILE))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok());
        if meta.is_some_and(|m| m.image != image) {
            tracing::info!(dir = %e.path().display(), "removing stale snapshot (images changed)");
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

/// Why a kernel's health makes it unfit for a snapshot, if it does.
pub fn unclean_reason(h: &HealthReply) -> Option<String> {
    h.taint_flags
        .chars()
        .find(|c| UNCLEAN_TAINT.contains(c))
        .map(|c| format!("kernel tainted {c} ({})", h.taint_flags))
}

/// Boots `cfg` with the vsock device on a root port, waits for a clean agent and
/// saves the machine into `root` under `cfg`'s key. The VM is gone afterwards.
pub async fn take(
    cfg: &VmConfig,
    accel: Accel,
    root: &Path,
    timeout: Duration,
) -> Result<Snapshot, SnapshotError> {
    if cfg.vsock == super::VsockChoice::None {
        return Err(SnapshotError::Unsupported("no vsock device".into()));
    }
    let key = snapshot_key(cfg, accel)?;
    let dir = root.join(key.dir_name());
    std::fs::create_dir_all(&dir).map_err(io(format!("create {}", dir.display())))?;
    let mut src = cfg.clone();
    src.vsock_slot = VsockSlot::RootPort;
    let start = Instant::now();
    let vm = Vm::launch_with(&src, accel).await?;
    let (client, health) = vm.wait_for_agent(timeout).await?;
    if let Some(why) = unclean_reason(&health) {
        return Err(SnapshotError::NotClean(why));
    }
    // No host connection may be open across the snapshot.
    drop(client);
    let qmp = vm.qmp();
    qmp.device_del_wait(VSOCK_DEVICE_ID, UNPLUG_TIMEOUT).await?;
    // Paused: one consistent pass over RAM instead of chasing dirty pages.
    qmp.stop().await?;
    qmp.migrate_unthrottled().await?;
    static TMP: AtomicU64 = AtomicU64::new(0);
    let tmp = dir.join(format!(
        "{STATE_FILE}.tmp-{}-{}",
        std::process::id(),
        TMP.fetch_add(1, Ordering::Relaxed)
    ));
    qmp.migrate(&exec_uri("cat > ", &tmp)).await?;
    let status = vm
        .until_exit("saving the snapshot", qmp.wait_migration(SAVE_TIMEOUT))
        .await??;
    vm.kill();
    if status != MigrationStatus::Completed {
        let _ = std::fs::remove_file(&tmp);
        return Err(SnapshotError::Migration {
            stage: "save",
            detail: format!("{status:?}"),
        });
    }
    let state = dir.join(STATE_FILE);
    let state_bytes = std::fs::metadata(&tmp).map(|m| m.len()).unwrap_or(0);
    std::fs::rename(&tmp, &state).map_err(io(format!("rename {}", tmp.display())))?;
    let meta = Meta {
        key: format!("{:016x}", key.full),
        image: format!("{:016x}", key.image),
        kernel_release: health.kernel_release.clone(),
        boot_id: health.boot_id.clone(),
        accel: accel.as_str().into(),
        state_bytes,
        build_secs: start.elapsed().as_secs_f64(),
    };
    let meta_tmp = tmp.with_extension("meta");
    let text = serde_json::to_vec_pretty(&meta).map_err(|e| SnapshotError::Io {
        what: "encode meta.json".into(),
        source: e.into(),
    })?;
    std::fs::write(&meta_tmp, text).map_err(io("write meta.json"))?;
    std::fs::rename(&meta_tmp, dir.join(META_FILE)).map_err(io("rename meta.json"))?;
    remove_stale(root, &key);
    tracing::info!(dir = %dir.display(), bytes = state_bytes, secs = meta.build_secs, "snapshot taken");
    Ok(Snapshot { dir, meta })
}

/// Phases of one restore, each measured from QEMU's spawn.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct RestoreTimings {
    /// QEMU and QMP up.
    pub qemu_up: Duration,
    /// Machine state loaded, guest running.
    pub loaded: Duration,
    /// vsock device plugged in and started by the guest driver.
    pub device: Duration,
    /// Agent answered Health.
    pub healthy: Duration,
    /// New generation written and reported back.
    pub total: Duration,
}

/// A guest restored from a snapshot, with its agent answering.
#[derive(Debug)]
pub struct Restored {
    /// The VM (killed by process group on drop, like every other).
    pub vm: Vm,
    /// A client of the restored agent.
    pub client: AgentClient,
    /// Health after the generation was written.
    pub health: HealthReply,
    /// The restore generation written into the guest.
    pub generation: u64,
    /// Where the time went.
    pub timings: RestoreTimings,
}

/// A restore generation never handed out before in this process and, being the time
/// in nanoseconds, different from any earlier run's.
pub fn fresh_generation() -> u64 {
    static LAST: AtomicU64 = AtomicU64::new(0);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(1, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
    let mut prev = LAST.load(Ordering::Relaxed);
    loop {
        let next = now.max(prev + 1);
        match LAST.compare_exchange(prev, next, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => return next,
            Err(p) => prev = p,
        }
    }
}

/// Plugs the vsock device of `plan` into the restored VM's root port.
async fn plug_vsock(vm: &Vm, plan: &VsockPlan) -> Result<(), SnapshotError> {
    let qmp = vm.qmp();
    let props = match plan {
        VsockPlan::VhostUser { vhost_socket, .. } => {
            qmp.chardev_add_unix(VSOCK_CHARDEV_ID, vhost_socket).await?;
            json!({ "driver": "vhost-user-vsock-pci", "id": VSOCK_DEVICE_ID,
                    "chardev": VSOCK_CHARDEV_ID, "bus": ROOT_PORT_ID })
        }
        VsockPlan::Kernel { cid } => {
            json!({ "driver": "vhost-vsock-pci", "id": VSOCK_DEVICE_ID,
                    "guest-cid": cid, "bus": ROOT_PORT_ID })
        }
        VsockPlan::None => return Err(SnapshotError::Unsupported("no vsock device".into())),
    };
    qmp.device_add(props).await?;
    // Connecting before the guest driver set up its queues wedges vhost-device-vsock
    // (see `Vm::wait_for_agent`), so wait until QEMU says the guest started it.
    let path = format!("/machine/peripheral/{VSOCK_DEVICE_ID}/virtio-backend");
    loop {
        if qmp.virtio_device_started(&path).await? {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Writes `generation` into the guest and returns Health once it reports it.
async fn mark_generation(
    client: &AgentClient,
    generation: u64,
) -> Result<HealthReply, SnapshotError> {
    let mut c = client.clone().with_call_timeout(Duration::from_secs(10));
    let reply = c
        .exec(ExecRequest {
            argv: vec![
                "sh".into(),
                "-c".into(),
                format!("mkdir -p /run/vexfs && cat > {GENERATION_FILE}"),
            ],
            stdin: generation.to_string().into_bytes(),
            timeout_ms: 5000,
            ..Default::default()
        })
        .await?;
    if reply.exit_code != 0 {
        return Err(SnapshotError::Unsupported(format!(
            "writing the restore generation failed: {}",
            String::from_utf8_lossy(&reply.stderr).trim()
        )));
    }
    let health = c.health().await?;
    if health.restore_generation != generation {
        return Err(SnapshotError::Generation {
            got: health.restore_generation,
            want: generation,
        });
    }
    Ok(health)
}

impl Vm {
    /// Restores `snap` into a new QEMU (its own process group and vsock daemon, as
    /// [`Vm::launch_with`]) and waits up to `timeout` for the agent; the new
    /// generation is written and checked. Any failure (a corrupt state file makes
    /// QEMU exit) is an error, with everything started already killed.
    pub async fn restore(
        cfg: &VmConfig,
        accel: Accel,
        snap: &Snapshot,
        timeout: Duration,
    ) -> Result<Restored, SnapshotError> {
        if snap.meta.accel != accel.as_str() {
            return Err(SnapshotError::Unsupported(format!(
                "snapshot taken under {}, restore asked for {}",
                snap.meta.accel,
                accel.as_str()
            )));
        }
        let mut dst = cfg.clone();
        dst.vsock_slot = VsockSlot::Incoming;
        let mut vm = Vm::launch_with(&dst, accel).await?;
        vm.restored = true;
        let t0 = vm.started();
        let mut timings = RestoreTimings {
            qemu_up: t0.elapsed(),
            ..Default::default()
        };
        let addr: Address = vm.agent_address().cloned().ok_or(VmError::NoVsock)?;
        let plan = dst.vsock.resolve(vm.run_dir(), dst.guest_cid);
        let work = async {
            let qmp = vm.qmp();
            qmp.migrate_incoming(&exec_uri("cat ", &snap.state()))
                .await?;
            let status = qmp.wait_migration(timeout).await?;
            if status != MigrationStatus::Completed {
                return Err(SnapshotError::Migration {
                    stage: "restore",
                    detail: format!("{status:?}"),
                });
            }
            // A source paused for the save arrives paused.
            if !qmp.query_status().await?.running {
                qmp.cont().await?;
            }
            timings.loaded = t0.elapsed();
            plug_vsock(&vm, &plan).await?;
            timings.device = t0.elapsed();
            let left = timeout.saturating_sub(t0.elapsed()).min(AGENT_WINDOW);
            let (client, _) = AgentClient::connect_healthy(&addr, left)
                .await
                .map_err(|e| SnapshotError::AgentSilent(e.to_string()))?;
            timings.healthy = t0.elapsed();
            let generation = fresh_generation();
            let health = mark_generation(&client, generation).await?;
            timings.total = t0.elapsed();
            Ok((client, health, generation))
        };
        let (client, health, generation) = match tokio::time::timeout(
            timeout,
            vm.until_exit("restoring a snapshot", work),
        )
        .await
        {
            Ok(Ok(r)) => r?,
            Ok(Err(e)) => return Err(e.into()),
            Err(_) => {
                return Err(SnapshotError::Migration {
                    stage: "restore",
                    detail: format!(
                        "no healthy agent within {timeout:?}; last output:\n{}",
                        vm.output_tail(20)
                    ),
                });
            }
        };
        tracing::info!(?timings, generation, "snapshot restored");
        Ok(Restored {
            vm,
            client,
            health,
            generation,
            timings,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image_config(dir: &Path) -> VmConfig {
        let kernel = dir.join("vmlinuz");
        let initrd = dir.join("initramfs");
        std::fs::write(&kernel, b"kernel bytes").unwrap();
        std::fs::write(&initrd, b"initramfs bytes").unwrap();
        let mut c = VmConfig::new(&kernel, "quiet");
        c.initramfs = Some(initrd);
        c.name = "vexfs-6.12.1+deb/x".into();
        c.cache_dir = Some(dir.join("cache"));
        c
    }

    #[test]
    fn key_follows_images_and_arguments_not_run_dirs() {
        let dir = tempfile::tempdir().unwrap();
        let c = image_config(dir.path());
        let k = snapshot_key(&c, Accel::Tcg).unwrap();
        assert_eq!(k, snapshot_key(&c, Accel::Tcg).unwrap(), "stable");
        assert_eq!(k.name, "vexfs-6.12.1-deb-x");
        assert!(k.dir_name().starts_with("vexfs-6.12.1-deb-x-"));
        let mut more = c.clone();
        more.memory_mib = 1024;
        let k2 = snapshot_key(&more, Accel::Tcg).unwrap();
        assert_ne!(k.full, k2.full, "QEMU arguments are in the key");
        assert_eq!(k.image, k2.image);
        assert_ne!(k.full, snapshot_key(&c, Accel::Kvm).unwrap().full);
        // The run parent (per-VM paths) is not in the key.
        let mut elsewhere = c.clone();
        elsewhere.run_parent = Some("/elsewhere".into());
        assert_eq!(k, snapshot_key(&elsewhere, Accel::Tcg).unwrap());
        // Rebuilt images (new content, new mtime) change both hashes.
        std::thread::sleep(Duration::from_millis(10));
        std::fs::write(&c.kernel, b"another kernel").unwrap();
        let k3 = snapshot_key(&c, Accel::Tcg).unwrap();
        assert_ne!(k.image, k3.image);
        assert_ne!(k.full, k3.full);
        let missing = VmConfig::new("/nonexistent/kernel", "");
        assert!(matches!(
            snapshot_key(&missing, Accel::Tcg),
            Err(SnapshotError::Io { .. })
        ));
    }

    #[test]
    fn disks_count_by_name_and_size_not_path() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = image_config(dir.path());
        let disk = |test: &str, len: u64| {
            let path = dir.path().join(format!("{test}-data.img"));
            std::fs::File::create(&path).unwrap().set_len(len).unwrap();
            super::super::disks::Disk {
                name: "data".into(),
                path,
            }
        };
        let bare = snapshot_key(&c, Accel::Tcg).unwrap();
        c.disks = vec![disk("t1", 1 << 20)];
        let k1 = snapshot_key(&c, Accel::Tcg).unwrap();
        assert_ne!(bare.full, k1.full, "a disk is in the key");
        c.disks = vec![disk("t2", 1 << 20)];
        assert_eq!(
            k1,
            snapshot_key(&c, Accel::Tcg).unwrap(),
            "another test's file"
        );
        c.disks = vec![disk("t3", 2 << 20)];
        assert_ne!(k1.full, snapshot_key(&c, Accel::Tcg).unwrap().full, "size");
        c.disks[0].name = "other".into();
        assert_ne!(k1.full, snapshot_key(&c, Accel::Tcg).unwrap().full, "name");
        c.disks[0].path = dir.path().join("missing.img");
        assert!(matches!(
            snapshot_key(&c, Accel::Tcg),
            Err(SnapshotError::Io { .. })
        ));
    }

    #[test]
    fn key_argv_is_the_root_port_layout() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = image_config(dir.path());
        c.vsock = super::super::VsockChoice::VhostUser;
        let argv = key_argv(&c, Accel::Tcg);
        assert!(argv.iter().any(|a| a.starts_with("pcie-root-port,id=rp0")));
        assert!(argv.iter().any(|a| a.ends_with(",bus=rp0,id=vsock")));
        assert!(!argv.iter().any(|a| a == "-incoming"));
    }

    fn write_snapshot(root: &Path, key: &SnapshotKey, image: u64) -> PathBuf {
        let dir = root.join(key.dir_name());
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(STATE_FILE), b"state").unwrap();
        let meta = Meta {
            key: format!("{:016x}", key.full),
            image: format!("{image:016x}"),
            kernel_release: "6.12".into(),
            boot_id: "b".into(),
            accel: "tcg".into(),
            state_bytes: 5,
            build_secs: 1.0,
        };
        std::fs::write(dir.join(META_FILE), serde_json::to_vec(&meta).unwrap()).unwrap();
        dir
    }

    #[test]
    fn find_needs_meta_and_state_and_stale_images_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let key = SnapshotKey {
            name: "vexfs-6.12".into(),
            image: 1,
            full: 2,
        };
        assert!(find(root, &key).is_none());
        let d = write_snapshot(root, &key, 1);
        let snap = find(root, &key).expect("complete snapshot");
        assert_eq!(snap.state(), d.join(STATE_FILE));
        std::fs::write(d.join(STATE_FILE), b"").unwrap();
        assert!(find(root, &key).is_none(), "empty state file");
        std::fs::write(d.join(META_FILE), b"{").unwrap();
        assert!(find(root, &key).is_none(), "bad meta");
        write_snapshot(root, &key, 1);
        // Same name: one with other images (stale), one with other arguments (kept);
        // another guest's name is never touched.
        let stale = write_snapshot(
            root,
            &SnapshotKey {
                full: 3,
                image: 9,
                ..key.clone()
            },
            9,
        );
        let other_args = write_snapshot(
            root,
            &SnapshotKey {
                full: 4,
                ..key.clone()
            },
            1,
        );
        let other_name = write_snapshot(
            root,
            &SnapshotKey {
                name: "vexfs-6.1".into(),
                image: 8,
                full: 5,
            },
            8,
        );
        remove_stale(root, &key);
        assert!(!stale.exists());
        assert!(other_args.exists() && other_name.exists() && find(root, &key).is_some());
        discard(&find(root, &key).unwrap());
        assert!(find(root, &key).is_none());
    }

    #[test]
    fn unclean_kernels_are_refused() {
        let h = |t: &str| HealthReply {
            taint_flags: t.into(),
            ..Default::default()
        };
        assert_eq!(unclean_reason(&h("")), None);
        assert_eq!(unclean_reason(&h("E")), None);
        assert!(unclean_reason(&h("OE")).unwrap().contains("tainted O"));
        assert!(unclean_reason(&h("D")).is_some());
    }

    #[test]
    fn generations_are_unique_and_nonzero() {
        let a = fresh_generation();
        let b = fresh_generation();
        assert!(a != 0 && b > a);
    }
}

//! `/dev/disk/by-name/NAME` for the harness's virtio-blk disks: the controller gives
//! each disk its plan name as the virtio serial, which the kernel shows in
//! `/sys/block/<dev>/serial`.

use std::path::{Path, PathBuf};

/// Where the links go.
pub const BY_NAME: &str = "/dev/disk/by-name";

/// (serial, device name) of every block device with a non-empty serial, sorted.
pub fn serials(sys_block: &Path) -> Vec<(String, String)> {
    let Ok(entries) = std::fs::read_dir(sys_block) else {
        return Vec::new();
    };
    let mut out: Vec<(String, String)> = entries
        .flatten()
        .filter_map(|e| {
            let dev = e.file_name().to_str()?.to_string();
            let serial = std::fs::read_to_string(e.path().join("serial")).ok()?;
            let serial = serial.trim();
            // A serial becomes a file name: nothing that could leave the folder.
            let ok = !serial.is_empty()
                && serial
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
                && serial != "."
                && serial != "..";
            ok.then(|| (serial.to_string(), dev))
        })
        .collect();
    out.sort();
    out
}

/// Links `<by_name>/<serial>` to `<dev_dir>/<device>` for each disk; returns the links
/// made. Existing links are replaced (an agent restart makes them again).
pub fn link_by_name(sys_block: &Path, dev_dir: &Path, by_name: &Path) -> Vec<PathBuf> {
    let found = serials(sys_block);
    if found.is_empty() {
        return Vec::new();
    }
    if let Err(e) = std::fs::create_dir_all(by_name) {
        eprintln!("vexfs-init: create {}: {e}", by_name.display());
        return Vec::new();
    }
    let mut made = Vec::new();
    for (serial, dev) in found {
        let link = by_name.join(&serial);
        let _ = std::fs::remove_file(&link);
        match std::os::unix::fs::symlink(dev_dir.join(&dev), &link) {
            Ok(()) => made.push(link),
            Err(e) => eprintln!("vexfs-init: link {}: {e}", link.display()),
        }
    }
    made
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_disks_by_serial() {
        let d = tempfile::tempdir().unwrap();
        let sys = d.path().join("sys/block");
        for (dev, serial) in [
            ("vda", Some("data\n")),
            ("vdb", Some("")),
            ("loop0", None),
            ("vdc", Some("../x")),
        ] {
            std::fs::create_dir_all(sys.join(dev)).unwrap();
            if let Some(s) = serial {
                std::fs::write(sys.join(dev).join("serial"), s).unwrap();
            }
        }
        std::fs::create_dir_all(sys.join("vdd")).unwrap();
        std::fs::write(sys.join("vdd/serial"), "scratch").unwrap();
        assert_eq!(
            serials(&sys),
            [
                ("data".to_string(), "vda".to_string()),
                ("scratch".into(), "vdd".into())
            ]
        );
        let by = d.path().join("dev/disk/by-name");
        let made = link_by_name(&sys, Path::new("/dev"), &by);
        assert_eq!(made.len(), 2);
        assert_eq!(
            std::fs::read_link(by.join("data")).unwrap(),
            Path::new("/dev/vda")
        );
        // Again (agent restart): replaced, not failed.
        assert_eq!(link_by_name(&sys, Path::new("/dev"), &by).len(), 2);
        assert!(link_by_name(&d.path().join("none"), Path::new("/dev"), &by).is_empty());
    }
}

//! Agent configuration: command-line flags, then the kernel command line
//! (`vexfs.agent.*=`) for what the flags leave open. Hand-parsed to keep the static
//! binary small.

use std::path::PathBuf;
use std::time::Duration;

/// Vsock port when neither a flag nor the kernel command line names one.
pub const DEFAULT_PORT: u32 = 5000;
/// The host's vsock CID: the only peer accepted by default.
pub const HOST_CID: u32 = 2;

/// Where the agent listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listen {
    /// AF_VSOCK on this port (guest side).
    Vsock(u32),
    /// A unix socket (development and tests).
    Unix(PathBuf),
}

/// Everything the agent needs to know at start.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Sockets to serve on.
    pub listen: Vec<Listen>,
    /// The kernel log (normally /dev/kmsg).
    pub kmsg: PathBuf,
    /// The proc tree (normally /proc).
    pub proc: PathBuf,
    /// Directories module paths must resolve under.
    pub module_dirs: Vec<PathBuf>,
    /// Vsock peers accepted; None accepts any CID.
    pub allowed_cids: Option<Vec<u32>>,
    /// Default heartbeat period.
    pub heartbeat: Duration,
    /// Default counter sample period.
    pub counters: Duration,
    /// A task in D state longer than this is reported.
    pub dstate_threshold: Duration,
    /// Default deadline of module unloads.
    pub unload_deadline: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: Vec::new(),
            kmsg: "/dev/kmsg".into(),
            proc: "/proc".into(),
            module_dirs: vec!["/lib/modules".into()],
            allowed_cids: Some(vec![HOST_CID]),
            heartbeat: Duration::from_secs(1),
            counters: Duration::from_secs(1),
            dstate_threshold: Duration::from_secs(3),
            unload_deadline: Duration::from_secs(10),
        }
    }
}

/// Bad flags or kernel parameters.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An unknown flag.
    #[error("unknown argument {0:?} (see --help)")]
    Unknown(String),
    /// A flag without its value.
    #[error("{0} needs a value")]
    Missing(String),
    /// A value that does not parse.
    #[error("bad value {value:?} for {flag}: {why}")]
    Bad {
        /// The flag or kernel parameter.
        flag: String,
        /// The value given.
        value: String,
        /// What is wrong.
        why: &'static str,
    },
    /// Nothing to listen on.
    #[error(
        "nothing to listen on: give --listen vsock:PORT or unix:PATH, or vexfs.agent.port= on the kernel command line"
    )]
    NoListen,
}

/// What the command line asked for.
#[derive(Debug, PartialEq)]
pub enum Action {
    /// Run the agent.
    Run(Config),
    /// Print help.
    Help,
    /// Print the version.
    Version,
    /// Diagnostic: probe a vsock listener from inside a guest (`probe-vsock CID PORT`).
    ProbeVsock {
        /// The CID to connect to (1 is this guest through vsock_loopback).
        cid: u32,
        /// The port.
        port: u32,
    },
}

/// Usage text for --help.
pub const USAGE: &str = "\
vexfs-agent: guest agent of the vexfs crash harness

USAGE: vexfs-agent [--listen vsock:PORT|unix:PATH]... [OPTIONS]
       vexfs-agent probe-vsock CID PORT

OPTIONS:
  --listen ADDR            vsock:PORT or unix:PATH (repeatable; default from the
                           kernel command line vexfs.agent.port=, else vsock:5000 as init)
  --kmsg PATH              kernel log to stream (default /dev/kmsg)
  --proc PATH              proc tree to read (default /proc)
  --allow-module-dir DIR   modules must be under DIR (repeatable; default /lib/modules)
  --allow-cid CID|any      vsock peer CIDs accepted (repeatable; default 2, the host)
  --heartbeat-ms N         default heartbeat period (1000)
  --counters-ms N          default counter sample period (1000)
  --dstate-ms N            report tasks in D state longer than N ms (3000)
  --unload-deadline-ms N   default module unload deadline (10000)
  -h, --help               this text
  -V, --version            the version

Kernel command line: vexfs.agent.port=N, vexfs.agent.allow_cid=N|any,
vexfs.agent.dstate_ms=N.

probe-vsock CID PORT (a diagnostic, run inside a guest): connects over vsock, sends the
HTTP/2 preface and prints \"accepted\" (exit 0) when the server answers with SETTINGS,
\"refused\" (exit 1) when it closes the connection, \"silent\"/\"unexpected\" (exit 3),
\"unreachable\" (exit 4) when the connect fails; exit 2 for bad arguments.
";

fn number(flag: &str, value: &str) -> Result<u64, Error> {
    value.parse().map_err(|_| Error::Bad {
        flag: flag.into(),
        value: value.into(),
        why: "not a number",
    })
}

fn millis(flag: &str, value: &str) -> Result<Duration, Error> {
    match number(flag, value)? {
        0 => Err(Error::Bad {
            flag: flag.into(),
            value: value.into(),
            why: "must be above zero",
        }),
        n => Ok(Duration::from_millis(n)),
    }
}

fn port(flag: &str, value: &str) -> Result<u32, Error> {
    u32::try_from(number(flag, value)?).map_err(|_| Error::Bad {
        flag: flag.into(),
        value: value.into(),
        why: "port out of range",
    })
}

/// Parses one `--listen` value.
pub fn parse_listen(value: &str) -> Result<Listen, Error> {
    if let Some(p) = value.strip_prefix("vsock:") {
        Ok(Listen::Vsock(port("--listen", p)?))
    } else if let Some(p) = value.strip_prefix("unix:").filter(|p| !p.is_empty()) {
        Ok(Listen::Unix(p.into()))
    } else {
        Err(Error::Bad {
            flag: "--listen".into(),
            value: value.into(),
            why: "expected vsock:PORT or unix:PATH",
        })
    }
}

fn add_cid(cids: &mut Option<Vec<u32>>, flag: &str, value: &str) -> Result<(), Error> {
    if value == "any" {
        *cids = None;
    } else {
        let cid = port(flag, value)?;
        if let Some(list) = cids {
            list.push(cid);
        }
    }
    Ok(())
}

/// Parses flags (without argv[0]) and the kernel command line. `as_init` says the agent
/// runs under the image's init and should default to vsock.
pub fn parse(args: &[String], kernel_cmdline: &str, as_init: bool) -> Result<Action, Error> {
    if args.first().map(String::as_str) == Some("probe-vsock") {
        return match &args[1..] {
            [cid, p] => Ok(Action::ProbeVsock {
                cid: port("probe-vsock CID", cid)?,
                port: port("probe-vsock PORT", p)?,
            }),
            _ => Err(Error::Missing("probe-vsock CID PORT".into())),
        };
    }
    let mut c = Config::default();
    let mut module_dirs = Vec::new();
    let mut cids: Option<Option<Vec<u32>>> = None;
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f, Some(v.to_string())),
            _ => (arg.as_str(), None),
        };
        let mut value = || {
            inline
                .clone()
                .or_else(|| it.next().cloned())
                .ok_or_else(|| Error::Missing(flag.to_string()))
        };
        match flag {
            "-h" | "--help" => return Ok(Action::Help),
            "-V" | "--version" => return Ok(Action::Version),
            "--listen" => c.listen.push(parse_listen(&value()?)?),
            "--kmsg" => c.kmsg = value()?.into(),
            "--proc" => c.proc = value()?.into(),
            "--allow-module-dir" => module_dirs.push(PathBuf::from(value()?)),
            "--allow-cid" => {
                let list = cids.get_or_insert_with(|| Some(Vec::new()));
                add_cid(list, flag, &value()?)?;
            }
            "--heartbeat-ms" => c.heartbeat = millis(flag, &value()?)?,
            "--counters-ms" => c.counters = millis(flag, &value()?)?,
            "--dstate-ms" => c.dstate_threshold = millis(flag, &value()?)?,
            "--unload-deadline-ms" => c.unload_deadline = millis(flag, &value()?)?,
            _ => return Err(Error::Unknown(arg.clone())),
        }
    }
    for param in kernel_cmdline.split_whitespace() {
        let Some((key, value)) = param.split_once('=') else {
            continue;
        };
        match key {
            "vexfs.agent.port" if c.listen.is_empty() => {
                c.listen.push(Listen::Vsock(port(key, value)?));
            }
            "vexfs.agent.allow_cid" if cids.is_none() => {
                let mut list = Some(Vec::new());
                add_cid(&mut list, key, value)?;
                cids = Some(list);
            }
            "vexfs.agent.dstate_ms" => c.dstate_threshold = millis(key, value)?,
            _ => {}
        }
    }
    if c.listen.is_empty() {
        if !as_init {
            return Err(Error::NoListen);
        }
        c.listen.push(Listen::Vsock(DEFAULT_PORT));
    }
    if !module_dirs.is_empty() {
        c.module_dirs = module_dirs;
    }
    if let Some(cids) = cids {
        c.allowed_cids = cids;
    }
    Ok(Action::Run(c))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    fn run(a: &[&str], cmdline: &str, init: bool) -> Config {
        match parse(&args(a), cmdline, init).unwrap() {
            Action::Run(c) => c,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn flags_override_kernel_cmdline() {
        let c = run(
            &["--listen", "unix:/tmp/a.sock", "--dstate-ms=500"],
            "vexfs.agent.port=7",
            false,
        );
        assert_eq!(c.listen, vec![Listen::Unix("/tmp/a.sock".into())]);
        assert_eq!(c.dstate_threshold, Duration::from_millis(500));
        let c = run(
            &[],
            "quiet vexfs.agent.port=7 vexfs.agent.allow_cid=any",
            false,
        );
        assert_eq!(c.listen, vec![Listen::Vsock(7)]);
        assert_eq!(c.allowed_cids, None);
    }

    #[test]
    fn defaults_as_init_and_errors() {
        let c = run(&[], "", true);
        assert_eq!(c.listen, vec![Listen::Vsock(DEFAULT_PORT)]);
        assert_eq!(c.allowed_cids, Some(vec![HOST_CID]));
        assert!(matches!(parse(&[], "", false), Err(Error::NoListen)));
        assert!(matches!(
            parse(&args(&["--bogus"]), "", false),
            Err(Error::Unknown(_))
        ));
        assert!(matches!(
            parse(&args(&["--listen"]), "", false),
            Err(Error::Missing(_))
        ));
        assert!(parse(&args(&["--listen", "tcp:1"]), "", false).is_err());
        assert!(
            parse(
                &args(&["--heartbeat-ms", "0", "--listen", "vsock:1"]),
                "",
                false
            )
            .is_err()
        );
        assert_eq!(parse(&args(&["--help"]), "", false).unwrap(), Action::Help);
        let c = run(
            &[
                "--listen",
                "vsock:1",
                "--allow-cid",
                "3",
                "--allow-cid",
                "4",
            ],
            "",
            false,
        );
        assert_eq!(c.allowed_cids, Some(vec![3, 4]));
    }

    #[test]
    fn probe_vsock_takes_a_cid_and_a_port() {
        assert_eq!(
            parse(
                &args(&["probe-vsock", "1", "5000"]),
                "vexfs.agent.port=7",
                true
            )
            .unwrap(),
            Action::ProbeVsock { cid: 1, port: 5000 }
        );
        for bad in [
            &["probe-vsock"][..],
            &["probe-vsock", "1"],
            &["probe-vsock", "1", "5000", "x"],
            &["probe-vsock", "one", "5000"],
            &["probe-vsock", "1", "99999999999"],
        ] {
            assert!(parse(&args(bad), "", false).is_err(), "{bad:?}");
        }
    }
}

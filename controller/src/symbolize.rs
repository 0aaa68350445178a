//! Source lines for the stack frames of the module under test: `func+0xOFF/0xSIZE [mod]`
//! frames of a crash report are resolved against the unstripped `.ko` on the host
//! (binutils `objdump -t` for the symbol's section and value, `addr2line -i -f -j` for
//! the file, line and inlined callers), the way the kernel's `decode_stacktrace.sh`
//! does it. No vmlinux is needed: `func+off` frames are section-relative already.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::LazyLock;

use regex::Regex;
use serde::Serialize;

/// Symbolizing failures.
#[derive(Debug, thiserror::Error)]
pub enum SymbolizeError {
    /// The module file is not there.
    #[error("module {0}: no such file")]
    NoModule(PathBuf),
    /// A binutils tool could not be run.
    #[error("{tool}: {source} (install binutils)")]
    Spawn {
        /// The tool.
        tool: &'static str,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// A binutils tool failed.
    #[error("{tool} failed on {path}: {stderr}")]
    Tool {
        /// The tool.
        tool: &'static str,
        /// The file it read.
        path: PathBuf,
        /// What it printed on stderr.
        stderr: String,
    },
    /// The module has no DWARF (stripped): only symbol names are known.
    #[error("{0} has no debug info (.debug_info): it was stripped")]
    NoDebugInfo(PathBuf),
}

/// One source position: a function and where in it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Location {
    /// Function name (`??` when unknown).
    pub function: String,
    /// Source file as recorded in DWARF (absolute build path).
    pub file: String,
    /// Line number (0 when unknown).
    pub line: u32,
}

impl Location {
    /// `vexfs.c:715` (headers as `linux/mutex.h:123`).
    pub fn short(&self) -> String {
        format!("{}:{}", short_path(&self.file), self.line)
    }
}

/// A frame of the module under test, resolved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Frame {
    /// 0-based index of the report line it was printed on.
    pub line_index: usize,
    /// Symbol as printed (`vexfs_fault_null`, `foo.cold`, `bar.isra.0`).
    pub symbol: String,
    /// Offset into the symbol.
    pub offset: u64,
    /// Symbol size as printed (0 when absent).
    pub size: u64,
    /// Module name in brackets.
    pub module: String,
    /// The faulting instruction (`RIP:` line) rather than a return address.
    pub rip: bool,
    /// The unwinder trusts it (no leading `?`).
    pub reliable: bool,
    /// ELF section of the symbol in the .ko (`.text`, `.text.unlikely`, `.init.text`).
    pub section: String,
    /// Section-relative address looked up: symbol value + offset, minus one for a
    /// return address so the call instruction's line is found.
    pub address: u64,
    /// Source positions in call order: the symbol's own function first, then each
    /// function inlined into it, the innermost (where the address is) last. Empty when
    /// the symbol is not in the .ko.
    pub locations: Vec<Location>,
}

impl Frame {
    /// Where the address is (the innermost inlined function), if known.
    pub fn innermost(&self) -> Option<&Location> {
        self.locations.last().filter(|l| l.line > 0)
    }
}

/// A report with the module's frames resolved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Symbolized {
    /// The module file read.
    pub ko: PathBuf,
    /// Module name whose frames were resolved.
    pub module: String,
    /// The report with `file:line` after each module frame and a line per inlined
    /// function.
    pub text: String,
    /// The resolved frames, in report order.
    pub frames: Vec<Frame>,
}

/// A module frame found in report text, before lookup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawFrame {
    /// 0-based line index.
    pub line_index: usize,
    /// Symbol as printed.
    pub symbol: String,
    /// Offset into it.
    pub offset: u64,
    /// Size as printed (0 when absent).
    pub size: u64,
    /// Module in brackets.
    pub module: String,
    /// `RIP:` frame.
    pub rip: bool,
    /// No leading `?`.
    pub reliable: bool,
}

/// `RIP: 0010:sym+0x7/0x20 [mod]` or ` ? sym+0x7/0x20 [mod]`, anywhere on a line (so
/// console timestamps and kmsg headers need not be stripped first).
static FRAME: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(
        r"(RIP: [0-9a-f]{4}:)?(\?\s+)?\b([A-Za-z_][A-Za-z0-9_.$]*)\+0x([0-9a-f]+)(?:/0x([0-9a-f]+))?\s+\[([A-Za-z0-9_-]+)\]",
    )
    .expect("frame regex")
});

/// The frames of `module` in `text` (module names compare with `-` and `_` alike, as
/// the kernel does).
pub fn parse_frames(text: &str, module: &str) -> Vec<RawFrame> {
    let want = module.replace('-', "_");
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        for c in FRAME.captures_iter(line) {
            if c[6].replace('-', "_") != want {
                continue;
            }
            let hex = |s: Option<regex::Match>| {
                s.and_then(|m| u64::from_str_radix(m.as_str(), 16).ok())
                    .unwrap_or(0)
            };
            out.push(RawFrame {
                line_index: i,
                symbol: c[3].to_string(),
                offset: hex(c.get(4)),
                size: hex(c.get(5)),
                module: c[6].to_string(),
                rip: c.get(1).is_some(),
                reliable: c.get(2).is_none(),
            });
        }
    }
    out
}

/// A symbol of the .ko: its section and section-relative value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Symbol {
    /// Section name.
    pub section: String,
    /// Value (section-relative in a relocatable object).
    pub value: u64,
    /// Size.
    pub size: u64,
}

/// What `objdump -h -t` says about a .ko: its symbols and whether it has DWARF.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ObjectInfo {
    /// Symbols by name.
    pub symbols: HashMap<String, Symbol>,
    /// A `.debug_info` section exists.
    pub has_debug_info: bool,
}

/// Parses `objdump -h -t` output (section headers, then the symbol table, whose rows
/// read `VALUE FLAGS SECTION\tSIZE NAME`).
pub fn parse_objdump(out: &str) -> ObjectInfo {
    let mut info = ObjectInfo::default();
    let mut in_symbols = false;
    for line in out.lines() {
        if line.starts_with("SYMBOL TABLE:") {
            in_symbols = true;
            continue;
        }
        if !in_symbols {
            let mut w = line.split_whitespace();
            if w.next().is_some_and(|idx| idx.parse::<u32>().is_ok())
                && w.next() == Some(".debug_info")
            {
                info.has_debug_info = true;
            }
            continue;
        }
        let Some((left, right)) = line.split_once('\t') else {
            continue;
        };
        let Some(value) = left.get(..16).and_then(|v| u64::from_str_radix(v, 16).ok()) else {
            continue;
        };
        // Functions only: data symbols cannot be frames.
        if !left.get(16..).is_some_and(|flags| flags.contains('F')) {
            continue;
        }
        let Some(section) = left.split_whitespace().last() else {
            continue;
        };
        let mut r = right.split_whitespace();
        let (Some(size), Some(name)) = (r.next(), r.next_back()) else {
            continue;
        };
        info.symbols.insert(
            name.to_string(),
            Symbol {
                section: section.to_string(),
                value,
                size: u64::from_str_radix(size, 16).unwrap_or(0),
            },
        );
    }
    info
}

/// Parses `addr2line -a -i -f` output: per address a `0x...` line, then (function,
/// `file:line`) pairs, innermost first. Returns the positions per address in call
/// order (outermost first).
pub fn parse_addr2line(out: &str) -> HashMap<u64, Vec<Location>> {
    let mut map: HashMap<u64, Vec<Location>> = HashMap::new();
    let mut current: Option<u64> = None;
    let mut function: Option<&str> = None;
    for line in out.lines() {
        let t = line.trim();
        if function.is_none()
            && let Some(hex) = t.strip_prefix("0x")
            && let Ok(addr) = u64::from_str_radix(hex, 16)
        {
            current = Some(addr);
            map.entry(addr).or_default();
            continue;
        }
        let Some(addr) = current else { continue };
        match function.take() {
            None => function = Some(t),
            Some(f) => {
                // `/path/vexfs.c:715 (discriminator 2)`; `??:0` or `??:?` when unknown.
                let pos = t.split(" (").next().unwrap_or(t);
                let (file, line) = pos.rsplit_once(':').unwrap_or((pos, "0"));
                map.entry(addr).or_default().push(Location {
                    function: f.to_string(),
                    file: file.to_string(),
                    line: line.parse().unwrap_or(0),
                });
            }
        }
    }
    for locs in map.values_mut() {
        locs.reverse();
    }
    map
}

/// The binutils calls, behind a trait so the deciding code is tested without them.
pub trait Tools {
    /// `objdump -h -t KO`.
    fn objdump(&self, ko: &Path) -> Result<String, SymbolizeError>;
    /// `addr2line -a -i -f -e KO -j SECTION ADDR...`.
    fn addr2line(&self, ko: &Path, section: &str, addrs: &[u64]) -> Result<String, SymbolizeError>;
}

/// The system's binutils.
#[derive(Debug, Clone, Copy, Default)]
pub struct Binutils;

fn run_tool(tool: &'static str, args: &[String], ko: &Path) -> Result<String, SymbolizeError> {
    let out = Command::new(tool)
        .args(args)
        .arg(ko)
        .output()
        .map_err(|source| SymbolizeError::Spawn { tool, source })?;
    if !out.status.success() {
        return Err(SymbolizeError::Tool {
            tool,
            path: ko.to_path_buf(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

impl Tools for Binutils {
    fn objdump(&self, ko: &Path) -> Result<String, SymbolizeError> {
        run_tool("objdump", &["-h".into(), "-t".into()], ko)
    }

    fn addr2line(&self, ko: &Path, section: &str, addrs: &[u64]) -> Result<String, SymbolizeError> {
        let mut args: Vec<String> = ["-a", "-i", "-f", "-j", section]
            .iter()
            .map(|s| s.to_string())
            .collect();
        args.extend(addrs.iter().map(|a| format!("{a:#x}")));
        args.push("-e".into());
        run_tool("addr2line", &args, ko)
    }
}

/// Symbolizes the frames of `module` in `text` against `ko` with the system binutils.
/// The module name is the .ko's file stem (`vexfs.ko` -> `vexfs`).
pub fn report(text: &str, ko: &Path) -> Result<Symbolized, SymbolizeError> {
    let module = ko
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.split('.').next())
        .unwrap_or_default()
        .to_string();
    report_with(&Binutils, text, ko, &module)
}

/// Symbolizes the frames of `module` in `text` against `ko` through `tools`.
pub fn report_with(
    tools: &dyn Tools,
    text: &str,
    ko: &Path,
    module: &str,
) -> Result<Symbolized, SymbolizeError> {
    if !ko.is_file() {
        return Err(SymbolizeError::NoModule(ko.to_path_buf()));
    }
    let raw = parse_frames(text, module);
    let mut frames = Vec::with_capacity(raw.len());
    if !raw.is_empty() {
        let info = parse_objdump(&tools.objdump(ko)?);
        if !info.has_debug_info {
            return Err(SymbolizeError::NoDebugInfo(ko.to_path_buf()));
        }
        frames = raw
            .into_iter()
            .map(|r| {
                let sym = info.symbols.get(&r.symbol);
                // A return address points after the call; its line is the call's.
                let back = u64::from(!r.rip && r.offset > 0);
                Frame {
                    section: sym.map(|s| s.section.clone()).unwrap_or_default(),
                    address: sym.map_or(0, |s| s.value + r.offset - back),
                    line_index: r.line_index,
                    symbol: r.symbol,
                    offset: r.offset,
                    size: r.size,
                    module: r.module,
                    rip: r.rip,
                    reliable: r.reliable,
                    locations: Vec::new(),
                }
            })
            .collect();
        let mut by_section: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
        for f in frames.iter().filter(|f| !f.section.is_empty()) {
            let addrs = by_section.entry(f.section.as_str()).or_default();
            if !addrs.contains(&f.address) {
                addrs.push(f.address);
            }
        }
        let mut found: HashMap<(String, u64), Vec<Location>> = HashMap::new();
        for (section, addrs) in by_section {
            for (addr, locs) in parse_addr2line(&tools.addr2line(ko, section, &addrs)?) {
                found.insert((section.to_string(), addr), locs);
            }
        }
        for f in &mut frames {
            if let Some(locs) = found.get(&(f.section.clone(), f.address)) {
                f.locations = locs.clone();
            }
        }
    }
    Ok(Symbolized {
        ko: ko.to_path_buf(),
        module: module.to_string(),
        text: render(text, &frames),
        frames,
    })
}

/// The report with each resolved frame's line followed by its position, and one line
/// per function inlined into it.
pub fn render(text: &str, frames: &[Frame]) -> String {
    let mut by_line: BTreeMap<usize, Vec<&Frame>> = BTreeMap::new();
    for f in frames {
        by_line.entry(f.line_index).or_default().push(f);
    }
    let mut out = String::with_capacity(text.len() + frames.len() * 40);
    for (i, line) in text.lines().enumerate() {
        out.push_str(line);
        let here = by_line.get(&i).map(Vec::as_slice).unwrap_or_default();
        let mut inlined = Vec::new();
        for f in here {
            let known: Vec<&Location> = f.locations.iter().filter(|l| l.line > 0).collect();
            match known.split_first() {
                Some((own, rest)) => {
                    out.push_str(&format!(" {}", own.short()));
                    inlined.extend(rest.iter().copied());
                }
                None => out.push_str(" (no source line)"),
            }
        }
        out.push('\n');
        let indent: String = line.chars().take_while(|c| c.is_whitespace()).collect();
        for l in inlined {
            out.push_str(&format!(
                "{indent}  (inlined) {} {}\n",
                l.function,
                l.short()
            ));
        }
    }
    out
}

/// A DWARF path made readable: kernel headers from `include/` on, else the file name.
pub fn short_path(file: &str) -> &str {
    if let Some(i) = file.rfind("/include/") {
        return &file[i + "/include/".len()..];
    }
    file.rsplit('/').next().unwrap_or(file)
}

#[cfg(test)]
mod tests;

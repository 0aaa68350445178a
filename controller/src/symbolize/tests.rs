use super::*;

const KO: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/symbolize/6.12.117+deb12-amd64/vexfs.ko"
);
const SOURCE: &str = include_str!("../../tests/fixtures/symbolize/vexfs.c");

/// A 6.12 oops as the vexfs module prints it (frame offsets within the fixture's
/// symbols), with console timestamps.
const OOPS: &str = "\
[    4.52] BUG: kernel NULL pointer dereference, address: 0000000000000000
[    4.52] RIP: 0010:vexfs_fault_null+0x7/0x11 [vexfs]
[    4.52] Call Trace:
[    4.52]  <TASK>
[    4.52]  ? strim+0xd/0x60
[    4.52]  vexfs_fire_fault+0x40/0x15f [vexfs]
[    4.52]  ? vexfs_file_write+0x70/0x2d5 [vexfs]
[    4.52]  vfs_write+0xf8/0x450
[    4.52]  init_module+0x10/0x101 [vexfs]
[    4.52]  ksys_write+0x6f/0xf0
";

/// The 1-based line range of C function `name` in `src`: its definition line to the
/// closing brace at column 0.
fn function_lines(src: &str, name: &str) -> std::ops::RangeInclusive<u32> {
    let lines: Vec<&str> = src.lines().collect();
    let start = lines
        .iter()
        .position(|l| {
            !l.starts_with(char::is_whitespace)
                && l.contains(&format!(" {name}("))
                && !l.ends_with(';')
        })
        .unwrap_or_else(|| panic!("{name} not in the source"));
    let end = start
        + lines[start..]
            .iter()
            .position(|l| *l == "}")
            .expect("closing brace");
    (start as u32 + 1)..=(end as u32 + 1)
}

#[test]
fn frames_of_the_module_are_parsed_with_rip_and_reliability() {
    let f = parse_frames(OOPS, "vexfs");
    let got: Vec<_> = f
        .iter()
        .map(|f| {
            (
                f.line_index,
                f.symbol.as_str(),
                f.offset,
                f.size,
                f.rip,
                f.reliable,
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            (1, "vexfs_fault_null", 7, 0x11, true, true),
            (5, "vexfs_fire_fault", 0x40, 0x15f, false, true),
            (6, "vexfs_file_write", 0x70, 0x2d5, false, false),
            (8, "init_module", 0x10, 0x101, false, true),
        ]
    );
    assert!(parse_frames(OOPS, "ext4").is_empty());
    // Suffixed symbols and dashed module names.
    let f = parse_frames(" foo.isra.0+0x1/0x2 [my-mod]\n", "my_mod");
    assert_eq!(f[0].symbol, "foo.isra.0");
}

#[test]
fn objdump_and_addr2line_outputs_parse() {
    let info = parse_objdump(
        "x.ko:     file format elf64-x86-64\n\nSections:\n\
         Idx Name          Size      VMA               LMA               File off  Algn\n  \
         47 .debug_info   000250e7  0000000000000000  0000000000000000  00005e00  2**0\n\
         \nSYMBOL TABLE:\n\
         0000000000000000 l    df *ABS*\t0000000000000000 vexfs.c\n\
         0000000000000010 l     F .text\t0000000000000011 vexfs_fault_null\n\
         0000000000000010 g     F .init.text\t0000000000000101 init_module\n\
         0000000000000000 l     O .data\t0000000000000020 some_table\n",
    );
    assert!(info.has_debug_info);
    assert_eq!(
        info.symbols["init_module"],
        Symbol {
            section: ".init.text".into(),
            value: 0x10,
            size: 0x101
        }
    );
    assert!(!info.symbols.contains_key("some_table"));
    assert!(!info.symbols.contains_key("vexfs.c"));
    let m = parse_addr2line(
        "0x0000000000001800\nvexfs_fire_armed_fault\n/b/vexfs.c:388 (discriminator 1)\n\
         vexfs_file_write\n/b/vexfs.c:419\n0x0000000000000017\n??\n??:0\n",
    );
    assert_eq!(
        m[&0x1800],
        [
            Location {
                function: "vexfs_file_write".into(),
                file: "/b/vexfs.c".into(),
                line: 419
            },
            Location {
                function: "vexfs_fire_armed_fault".into(),
                file: "/b/vexfs.c".into(),
                line: 388
            }
        ]
    );
    assert_eq!(m[&0x17][0].line, 0);
    assert_eq!(
        short_path("/h/usr/src/linux-headers-6.12/include/linux/mutex.h"),
        "linux/mutex.h"
    );
    assert_eq!(
        short_path("/root/.cache/vexfs/build/x/vexfs/vexfs.c"),
        "vexfs.c"
    );
}

/// Real binutils on the real module: the RIP frame's line is inside
/// vexfs_fault_null in the source the .ko was built from (the NULL store), return
/// addresses resolve to a line inside the calling function, inlined functions are
/// listed, and .init.text symbols resolve in their own section.
#[test]
fn real_module_frames_get_source_lines_that_match_the_source() {
    let s = report(OOPS, Path::new(KO)).expect("symbolize");
    assert_eq!(s.module, "vexfs");
    assert_eq!(s.frames.len(), 4);

    let rip = &s.frames[0];
    assert_eq!((rip.section.as_str(), rip.address), (".text", 0x10 + 7));
    let loc = rip.innermost().expect("rip line");
    assert_eq!(loc.function, "vexfs_fault_null");
    assert!(function_lines(SOURCE, "vexfs_fault_null").contains(&loc.line));
    let src_line = SOURCE.lines().nth(loc.line as usize - 1).unwrap();
    assert!(
        src_line.contains("v->counter++"),
        "line {}: {src_line}",
        loc.line
    );

    // A return address: looked up one byte back, inside the caller.
    let call = &s.frames[1];
    assert_eq!(call.address, 0x9b0 + 0x40 - 1);
    let l = call.innermost().expect("caller line");
    assert!(
        function_lines(SOURCE, "vexfs_fire_fault").contains(&l.line),
        "{l:?}"
    );

    // vexfs_fire_armed_fault is inlined into vexfs_file_write.
    let w = &s.frames[2];
    assert_eq!(w.locations[0].function, "vexfs_file_write");
    assert!(function_lines(SOURCE, "vexfs_file_write").contains(&w.locations[0].line));
    assert!(
        w.locations.len() >= 2,
        "expected an inlined function: {:?}",
        w.locations
    );

    let init = &s.frames[3];
    assert_eq!(init.section, ".init.text");
    assert!(function_lines(SOURCE, "vexfs_init").contains(&init.innermost().unwrap().line));

    let text = &s.text;
    assert!(
        text.contains(&format!(
            "RIP: 0010:vexfs_fault_null+0x7/0x11 [vexfs] vexfs.c:{}\n",
            loc.line
        )),
        "{text}"
    );
    assert!(text.contains("  (inlined) "), "{text}");
    // Kernel frames are left alone.
    assert!(text.contains("[    4.52]  vfs_write+0xf8/0x450\n"));
}

#[test]
fn missing_module_and_stripped_module_are_clear_errors() {
    let e = report(OOPS, Path::new("/nonexistent/vexfs.ko")).unwrap_err();
    assert!(matches!(e, SymbolizeError::NoModule(_)), "{e}");
    let dir = tempfile::tempdir().unwrap();
    let stripped = dir.path().join("vexfs.ko");
    let st = std::process::Command::new("objcopy")
        .args(["--strip-debug", KO])
        .arg(&stripped)
        .status()
        .unwrap();
    assert!(st.success());
    let e = report(OOPS, &stripped).unwrap_err();
    assert!(matches!(e, SymbolizeError::NoDebugInfo(_)), "{e}");
    assert!(e.to_string().contains("stripped"));
    // No module frames: nothing to look up, the text comes back unchanged.
    let s = report("no frames here\n", &stripped).unwrap();
    assert!(s.frames.is_empty());
    assert_eq!(s.text, "no frames here\n");
}

/// Symbols the .ko lacks keep their line and say so.
#[test]
fn unknown_symbols_are_marked() {
    let s = report(" vexfs_gone+0x1/0x2 [vexfs]\n", Path::new(KO)).unwrap();
    assert!(s.frames[0].locations.is_empty());
    assert_eq!(s.text, " vexfs_gone+0x1/0x2 [vexfs] (no source line)\n");
}

//! The plan parser: random valid plans written as TOML parse back to themselves; a
//! plan broken in one known way is rejected as invalid; mangled text gives a plan
//! that obeys every rule (and survives a write-and-parse round trip) or an error whose
//! line:column lies inside the text.

use vexfs_controller::plan::{
    self, CyclesStep, DEFAULT_PLAN, Error, ExecStep, Exit, FreshVm, GuestConfig, LeakCheck,
    ModuleConfig, MountStep, OnRestart, Plan, Step, Test,
};

use crate::support::{self, Rng, mutate};

/// Peak heap of one case.
const HEAP_BOUND: usize = 8 << 20;

const TOKENS: &[&[u8]] = &[
    b"[[test]]\n",
    b"[guest]\n",
    b"[module]\n",
    b"name = ",
    b"steps = [",
    b"\"load\"",
    b"{ exec = { cmd = \"true\" } }",
    b"{ sleep = 1e999 }",
    b"{ cycles = { cmd = \"x\", count = 0 } }",
    b"timeout_s = 0",
    b"expect_crash = \"x\"",
    b" = ",
    b"=",
    b"[",
    b"]",
    b"{",
    b"}",
    b"\"",
    b"'''",
    b"\"\"\"",
    b"#",
    b"\\u0000",
    b"0x7fffffffffffffff",
    b"-1",
    b"nan",
    b"inf",
    b"1979-05-27T07:32:00Z",
    b"\n",
    b"\r\n",
    b".",
];

#[test]
fn plan_parser() {
    support::run("plan_parser", HEAP_BOUND, |rng| match rng.below(10) {
        0..=2 => round_trip(rng),
        3 | 4 => one_defect(rng),
        _ => mangled(rng),
    });
    // Nesting far past the TOML parser's depth limit is an error, not a stack overflow.
    for open in ["[", "{ a = "] {
        let text = format!("name = \"x\"\nsteps = {}", open.repeat(100_000));
        check_result(&text, &plan::parse(&text, "deep.toml"));
    }
}

fn word(rng: &mut Rng) -> String {
    let alphabet = [
        'a', 'b', 'z', '0', '9', '-', '_', '.', ' ', 'é', '🦀', '"', '\\', '\'', '\t', '#', '=',
    ];
    let mut s: String = (0..rng.range(1, 10))
        .map(|_| *rng.pick(&alphabet))
        .collect();
    if rng.one_in(20) {
        s.push('\u{1}');
    }
    s
}

/// A number TOML can hold (its integers are i64).
fn small(rng: &mut Rng) -> u64 {
    rng.number() % (i64::MAX as u64)
}

fn random_plan(rng: &mut Rng) -> Plan {
    let tests = (0..rng.range(1, 3)).map(|i| random_test(rng, i)).collect();
    Plan {
        name: word(rng),
        kernels: (0..rng.range(1, 3)).map(|_| word(rng)).collect(),
        module: ModuleConfig {
            name: word(rng),
            path: word(rng),
            params: word(rng),
            fstype: word(rng),
            smoke_source: word(rng),
            trigger: rng.one_in(2).then(|| word(rng)),
            leak_bound_kb: rng.number(),
            source: None,
            make_args: Vec::new(),
            after_restart: Vec::new(),
        },
        guest: GuestConfig {
            memory_mib: rng.number() as u32,
            cpus: rng.number() as u32,
            cmdline: (0..rng.size(3)).map(|_| word(rng)).collect(),
            silence_s: small(rng),
            tools: Vec::new(),
            kernel_modules: Vec::new(),
            disks: Vec::new(),
            fresh_vm: *rng.pick(&[FreshVm::OnCrash, FreshVm::PerTest]),
            snapshot: *rng.pick(&[true, false]),
        },
        isolate_after: rng.number() as u32,
        tests,
        forensics: Default::default(),
    }
}

fn random_test(rng: &mut Rng, index: usize) -> Test {
    let mut steps = Vec::new();
    let mut labels: Vec<String> = Vec::new();
    for _ in 0..rng.range(1, 5) {
        let step = match rng.below(11) {
            0 => Step::Load,
            1 => Step::Unload,
            2 => Step::Reload,
            3 => Step::Exec(ExecStep {
                cmd: word(rng),
                exit: match rng.below(3) {
                    0 => Exit::Code(rng.number() as i32),
                    1 => Exit::Word("nonzero".into()),
                    _ => Exit::Word(word(rng)),
                },
                stdout: rng.one_in(2).then(|| word(rng)),
                stderr: rng.one_in(3).then(|| word(rng)),
                uid: rng.number() as u32,
                timeout_s: rng.one_in(2).then(|| small(rng)),
            }),
            4 => Step::Mount(MountStep {
                target: word(rng),
                source: word(rng),
                options: word(rng),
                fails_with: rng.one_in(3).then(|| word(rng)),
                create: rng.one_in(2),
                device: None,
            }),
            5 => Step::Unmount(word(rng)),
            6 => Step::Trigger(word(rng)),
            7 => Step::Cycles(CyclesStep {
                cmd: word(rng),
                count: rng.range(1, 1 << 20) as u32,
                threads: rng.range(1, 64) as u32,
                max_error_rate: rng.below(9) as f64 / 8.0,
                max_slowdown: rng.below(100) as f64 / 4.0,
                leak_samples: rng.number() as u32,
            }),
            8 => {
                let l = word(rng);
                labels.push(l.clone());
                Step::Sample(l)
            }
            9 if !labels.is_empty() => Step::NoLeakSince(LeakCheck {
                since: rng.pick(&labels).clone(),
                max_kb: small(rng),
            }),
            _ => Step::Sleep(rng.below(14_401) as f64 / 4.0),
        };
        steps.push(step);
    }
    let triggers = steps.iter().any(|s| matches!(s, Step::Trigger(_)));
    Test {
        name: format!("t{index}{}", word(rng).replace('/', "")),
        timeout_s: small(rng).max(1),
        expect_crash: (triggers || rng.one_in(3)).then(|| word(rng)),
        only_kernels: (0..rng.size(2)).map(|_| word(rng)).collect(),
        retries: rng.number() as u32,
        on_restart: if rng.one_in(2) {
            OnRestart::Continue
        } else {
            OnRestart::Rerun
        },
        steps,
        after_restart: None,
        expect_data_loss: false,
        requires: Vec::new(),
    }
}

fn to_toml(plan: &Plan) -> String {
    toml::to_string(plan).unwrap_or_else(|e| panic!("cannot write {plan:?}: {e}"))
}

/// A valid plan, written out, parses back to itself.
fn round_trip(rng: &mut Rng) {
    let plan = random_plan(rng);
    let text = to_toml(&plan);
    match plan::parse(&text, "p.toml") {
        Ok(back) => assert_eq!(back, plan, "round trip through\n{text}"),
        Err(e) => panic!("valid plan rejected: {e}\n{text}"),
    }
}

/// A valid plan with one rule broken is rejected as invalid.
fn one_defect(rng: &mut Rng) {
    let mut plan = random_plan(rng);
    let t = rng.below(plan.tests.len());
    let test = &mut plan.tests[t];
    match rng.below(10) {
        0 => plan.kernels.clear(),
        1 => plan.tests.clear(),
        2 => test.name = rng.pick(&["", "a/b", "a\nb"]).to_string(),
        3 => {
            let copy = test.clone();
            plan.tests.push(copy);
        }
        4 => test.timeout_s = 0,
        5 => test.steps.clear(),
        6 => {
            test.expect_crash = None;
            test.steps.push(Step::Trigger(word(rng)));
        }
        7 => test.steps.insert(
            0,
            Step::NoLeakSince(LeakCheck {
                since: "never-sampled\u{0}".into(),
                max_kb: 1,
            }),
        ),
        8 => test.steps.push(Step::Cycles(CyclesStep {
            cmd: "x".into(),
            count: rng.below(2) as u32,
            threads: 0,
            max_error_rate: 0.0,
            max_slowdown: 1.0,
            leak_samples: 1,
        })),
        _ => test.steps.push(Step::Sleep(*rng.pick(&[
            -0.25,
            3600.25,
            1e300,
            f64::NAN,
            f64::INFINITY,
        ]))),
    }
    let text = to_toml(&plan);
    match plan::parse(&text, "p.toml") {
        Err(Error::Invalid { path, message }) => {
            assert_eq!(path, "p.toml");
            assert!(!message.is_empty());
        }
        other => panic!("broken plan gave {other:?}\n{text}"),
    }
}

/// Mangled text: any outcome, as long as it obeys the rules.
fn mangled(rng: &mut Rng) {
    let mut bytes = if rng.one_in(100) {
        DEFAULT_PLAN.as_bytes().to_vec()
    } else {
        to_toml(&random_plan(rng)).into_bytes()
    };
    for _ in 0..rng.range(1, 6) {
        mutate(rng, &mut bytes, TOKENS);
    }
    if rng.one_in(200) {
        let at = rng.below(bytes.len() + 1);
        let long = "x".repeat(rng.range(1, 200_000));
        bytes.splice(at..at, format!("\nk = \"{long}\"\n").into_bytes());
    }
    let text = String::from_utf8_lossy(&bytes);
    check_result(&text, &plan::parse(&text, "m.toml"));
}

/// The properties of any parse result.
fn check_result(text: &str, result: &Result<Plan, Error>) {
    match result {
        Ok(plan) => {
            rules_hold(plan);
            // What parsed can be written and parsed again to the same plan (compared as
            // text: NaN is a valid float here and never equal to itself).
            let written = to_toml(plan);
            let again = plan::parse(&written, "again.toml")
                .unwrap_or_else(|e| panic!("a parsed plan does not parse back: {e}\n{written}"));
            assert_eq!(to_toml(&again), written);
        }
        Err(Error::Parse {
            path,
            line,
            column,
            message,
        }) => {
            assert!(!message.is_empty());
            let lines: Vec<&str> = text.split('\n').collect();
            assert!(
                (1..=lines.len()).contains(line),
                "line {line} outside the {} lines of {} ({message})",
                lines.len(),
                support::short(&text)
            );
            let width = lines[line - 1].chars().count();
            assert!(
                (1..=width + 1).contains(column),
                "column {column} outside line {line} of {width} chars: {} ({message})",
                support::short(&lines[line - 1])
            );
            let shown = result
                .as_ref()
                .err()
                .map(ToString::to_string)
                .unwrap_or_default();
            assert!(
                shown.starts_with(&format!("{path}:{line}:{column}: ")),
                "{shown}"
            );
        }
        Err(Error::Invalid { message, .. }) => assert!(!message.is_empty()),
        Err(e @ Error::Read { .. }) => panic!("parse cannot fail to read: {e}"),
    }
}

/// The rules `plan::parse` promises for an accepted plan.
fn rules_hold(plan: &Plan) {
    assert!(!plan.kernels.is_empty());
    assert!(!plan.tests.is_empty());
    let mut names = std::collections::HashSet::new();
    for t in &plan.tests {
        assert!(
            !t.name.is_empty() && !t.name.contains(['/', '\n']),
            "{:?}",
            t.name
        );
        assert!(names.insert(&t.name), "duplicate {:?}", t.name);
        assert!(t.timeout_s > 0);
        assert!(!t.steps.is_empty());
        if t.steps.iter().any(|s| matches!(s, Step::Trigger(_))) {
            assert!(t.expect_crash.is_some());
        }
        let mut labels = Vec::new();
        for s in &t.steps {
            match s {
                Step::Sample(l) => labels.push(l),
                Step::NoLeakSince(c) => assert!(labels.contains(&&c.since)),
                Step::Cycles(c) => assert!(c.count > 0 && c.threads > 0),
                Step::Sleep(s) => assert!((0.0..=3600.0).contains(s)),
                _ => {}
            }
        }
    }
}

//! Builds a VM's guest-physical address space from an AxVisor-format config
//! and prints what it holds: regions, nested-table statistics, GPA→HPA and
//! GVA→GPA translations, fault outcomes and the mapped runs.
//!
//! ```text
//! cargo run --release --example quickstart [-- [--arch x86_64|aarch64|riscv64] [path/to/vm.toml]]
//! ```
//!
//! Without a path it runs a built-in x86-64 config. It reads unmodified
//! AxVisor VM configs, `[devices]` included. The architecture comes from
//! `--arch`, else the config's `[base] arch` (an extension; AxVisor's files
//! have none), else the first hint in the file name, VM name, kernel path
//! or device names, else x86_64; the report says which and why. A bad
//! config is reported with the section, record index and field at fault,
//! and the exit code is 1.

use std::io::{ErrorKind, Write};
use std::process::ExitCode;

use npt_examples::{Arch, DEFAULT_CONFIG, DemoError, VmConfig, run_demo};

const USAGE: &str = "usage: quickstart [--arch x86_64|aarch64|riscv64] [path/to/vm.toml]";

/// The command line.
struct Args {
    arch: Option<Arch>,
    path: Option<String>,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        arch: None,
        path: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let arch = match arg.as_str() {
            "--" => continue,
            "-h" | "--help" => return Err(String::new()),
            "--arch" => Some(it.next().ok_or("--arch needs a value")?),
            a => a.strip_prefix("--arch=").map(str::to_string),
        };
        match arch {
            Some(name) => args.arch = Some(name.parse().map_err(|e| format!("--arch: {e}"))?),
            None if arg.starts_with('-') => return Err(format!("unknown option `{arg}`")),
            None if args.path.is_some() => return Err("more than one config path".into()),
            None => args.path = Some(arg),
        }
    }
    Ok(args)
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(msg) if msg.is_empty() => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(msg) => {
            eprintln!("error: {msg}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let (source, text) = match &args.path {
        None => (
            "built-in default config".to_string(),
            DEFAULT_CONFIG.to_string(),
        ),
        Some(path) => match std::fs::read_to_string(path) {
            Ok(text) => (path.clone(), text),
            Err(e) => {
                eprintln!("error: {path}: {e}");
                return ExitCode::FAILURE;
            }
        },
    };
    let cfg = match VmConfig::parse(&text) {
        Ok(cfg) => cfg,
        Err(e) => {
            eprintln!("error: {source}: {e}");
            return ExitCode::FAILURE;
        }
    };
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    // A failed write to stdout (a closed pipe) is reported like any error.
    let _ = writeln!(out, "config: {source}");
    match run_demo(&cfg, args.arch, args.path.as_deref(), &mut out) {
        Ok(_) => ExitCode::SUCCESS,
        // The reader went away (`| head`): not a failure of the demo.
        Err(DemoError::Io(e)) if e.kind() == ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => {
            let _ = out.flush();
            eprintln!("error: {source}: {e}");
            ExitCode::FAILURE
        }
    }
}

//! AxVisor-format VM configs: the TOML the demo reads, as typed values.
//!
//! The part of an AxVisor VM config the demo uses:
//!
//! ```toml
//! [base]
//! name = "my-vm"
//! arch = "x86_64"          # extension, optional: picks the table format
//!
//! [kernel]
//! entry_point = 0x10_0000  # optional, shown as a sample translation
//! kernel_path = "bzImage"  # optional, a hint for the architecture
//! memory_regions = [
//!     # [base_paddr, size, flags, map_type]
//!     [0x0, 0x1000_0000, 0x7, 0],
//! ]
//!
//! [devices]
//! passthrough_devices = [["IO APIC", 0xfec0_0000, 0xfec0_0000, 0x1000, 1]]
//! passthrough_addresses = [[0xfed0_0000, 0x1000]]
//! emu_devices = [["virtio-blk", 0xff00_0000, 0x1000, 33, 0xe1, []]]
//!
//! [demo]                   # extension: the demo's own extras
//! lazy_ram = [0x1_0000_0000, 0x400_0000]
//! ```
//!
//! Other keys and tables of a full AxVisor config (`cpu_num`,
//! `interrupt_mode`, ...) are accepted and ignored, so real configs load as
//! they are. `flags` bits: 0 read, 1 write, 2 execute, 3 user, 4 device,
//! 5 uncached. `map_type`: 0 `MAP_ALLOC` (RAM), 1 `MAP_IDENTICAL`, 2
//! `MAP_RESERVED` (both GPA == HPA pass-through) are AxVisor's; 3 MMIO
//! (emulated) and 4 ROM are this project's extensions, which AxVisor does
//! not read.
//!
//! Real AxVisor configs carry no `arch` key: [`choose_arch`] says which
//! architecture it picked and why.

use std::fmt;
use std::str::FromStr;

use gpa_types::DevicesConfig;
use serde::Deserialize;

use crate::error::DemoError;

/// The config the demo runs when given none: a small x86-64 PC.
pub const DEFAULT_CONFIG: &str = r#"
# map_type 3 (MMIO) and 4 (ROM), `[base] arch` and `[demo]` are this
# project's extensions of AxVisor's format.
[base]
id = 0
name = "quickstart-pc"
arch = "x86_64"
cpu_num = 1

[kernel]
entry_point = 0x10_0000
memory_regions = [
    # [base_paddr,  size,         flags, map_type]
    [0x0000_0000,   0x1000_0000,  0x7,   0], # 256 MiB RAM, rwx, MAP_ALLOC
    [0x8000_0000,   0x4000_0000,  0x13,  2], # 1 GiB PCI window, rw device, MAP_RESERVED
    [0xfec0_0000,   0x1000,       0x13,  3], # IOAPIC, emulated
    [0xfed0_0000,   0x1000,       0x13,  3], # HPET, emulated
    [0xfee0_0000,   0x1000,       0x13,  3], # local APIC, emulated
    [0xfff0_0000,   0x10_0000,    0x5,   4], # 1 MiB firmware ROM, r-x
]

[demo]
lazy_ram = [0x1_0000_0000, 0x400_0000]      # 64 MiB at 4 GiB, filled on first touch
"#;

/// A guest architecture: it picks the nested-table format and the format of
/// the guest page table the demo writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Arch {
    /// x86-64: Intel EPT 4-level; guest tables x86-64 4-level paging.
    X86_64,
    /// AArch64: stage 2 with a 40-bit IPA; guest tables 4 KiB granule.
    Aarch64,
    /// RISC-V 64: G-stage Sv39x4; guest tables Sv39.
    Riscv64,
}

impl Arch {
    /// Every architecture, in the order the demo lists them.
    pub const ALL: [Arch; 3] = [Arch::X86_64, Arch::Aarch64, Arch::Riscv64];

    /// The name used in configs and on the command line.
    pub const fn name(self) -> &'static str {
        match self {
            Self::X86_64 => "x86_64",
            Self::Aarch64 => "aarch64",
            Self::Riscv64 => "riscv64",
        }
    }
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Arch {
    type Err = DemoError;

    fn from_str(s: &str) -> Result<Self, DemoError> {
        match s.trim().to_ascii_lowercase().as_str() {
            "x86_64" | "x86-64" | "amd64" | "x64" => Ok(Self::X86_64),
            "aarch64" | "arm64" => Ok(Self::Aarch64),
            "riscv64" | "riscv" | "rv64" => Ok(Self::Riscv64),
            _ => Err(DemoError::UnknownArch {
                name: s.to_string(),
            }),
        }
    }
}

/// The parts of a VM config the demo uses, checked for shape. The records
/// themselves are checked by `guest_aspace` when the space is built, so its
/// errors name the record and field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmConfig {
    /// `[base] name`, or `"unnamed"`.
    pub name: String,
    /// `[base] arch`, if given.
    pub arch: Option<Arch>,
    /// `[kernel] entry_point`, if given.
    pub entry_point: Option<u64>,
    /// `[kernel] kernel_path`, if given (an architecture hint).
    pub kernel_path: Option<String>,
    /// `[kernel] memory_regions`: `[base_paddr, size, flags, map_type]`.
    pub memory_regions: Vec<[u64; 4]>,
    /// The `[devices]` table (empty lists when absent).
    pub devices: DevicesConfig,
    /// `[demo] lazy_ram`: `(base, size)` of RAM populated on faults. When
    /// absent the demo places 16 MiB above the highest region.
    pub lazy_ram: Option<(u64, u64)>,
}

/// The file as TOML sees it.
#[derive(Deserialize)]
struct ConfigFile {
    #[serde(default)]
    base: BaseTable,
    kernel: KernelTable,
    #[serde(default)]
    devices: DevicesConfig,
    #[serde(default)]
    demo: DemoTable,
}

#[derive(Deserialize, Default)]
struct BaseTable {
    name: Option<String>,
    arch: Option<String>,
}

#[derive(Deserialize)]
struct KernelTable {
    entry_point: Option<i64>,
    kernel_path: Option<String>,
    memory_regions: Vec<Vec<i64>>,
}

#[derive(Deserialize, Default)]
struct DemoTable {
    lazy_ram: Option<Vec<i64>>,
}

/// Names of the four record fields, as AxVisor documents them.
const FIELDS: [&str; 4] = ["base_paddr", "size", "flags", "map_type"];

/// `value` as an unsigned number, or the error naming `field`.
fn unsigned(value: i64, field: impl FnOnce() -> String) -> Result<u64, DemoError> {
    u64::try_from(value).map_err(|_| DemoError::Negative {
        field: field(),
        value,
    })
}

impl VmConfig {
    /// Parses an AxVisor-format TOML config.
    ///
    /// ```
    /// use npt_examples::{Arch, VmConfig};
    ///
    /// let cfg = VmConfig::parse(
    ///     "[base]\narch = 'riscv64'\n[kernel]\nmemory_regions = [[0x8000_0000, 0x10_0000, 0x7, 0]]\n",
    /// )?;
    /// assert_eq!(cfg.arch, Some(Arch::Riscv64));
    /// assert_eq!(cfg.memory_regions, vec![[0x8000_0000, 0x10_0000, 0x7, 0]]);
    /// # Ok::<(), npt_examples::DemoError>(())
    /// ```
    pub fn parse(text: &str) -> Result<Self, DemoError> {
        let file: ConfigFile = toml::from_str(text)?;
        let arch = file.base.arch.as_deref().map(str::parse).transpose()?;
        let entry_point = file
            .kernel
            .entry_point
            .map(|v| unsigned(v, || "[kernel] entry_point".into()))
            .transpose()?;
        let mut memory_regions = Vec::with_capacity(file.kernel.memory_regions.len());
        for (index, record) in file.kernel.memory_regions.iter().enumerate() {
            let values: [i64; 4] = record
                .as_slice()
                .try_into()
                .map_err(|_| DemoError::Record {
                    index,
                    message: format!(
                        "expected 4 values [base_paddr, size, flags, map_type], found {}",
                        record.len()
                    ),
                })?;
            let mut out = [0u64; 4];
            for (i, (slot, value)) in out.iter_mut().zip(values).enumerate() {
                *slot = unsigned(value, || format!("memory_regions[{index}]: {}", FIELDS[i]))?;
            }
            memory_regions.push(out);
        }
        let lazy_ram = match file.demo.lazy_ram.as_deref() {
            None => None,
            Some(&[base, size]) => Some((
                unsigned(base, || "[demo] lazy_ram: base".into())?,
                unsigned(size, || "[demo] lazy_ram: size".into())?,
            )),
            Some(other) => return Err(DemoError::LazyRamShape { len: other.len() }),
        };
        Ok(Self {
            name: file.base.name.unwrap_or_else(|| "unnamed".into()),
            arch,
            entry_point,
            kernel_path: file.kernel.kernel_path,
            memory_regions,
            devices: file.devices,
            lazy_ram,
        })
    }

    /// The built-in [`DEFAULT_CONFIG`].
    pub fn builtin() -> Result<Self, DemoError> {
        Self::parse(DEFAULT_CONFIG)
    }
}

/// Words that point at an architecture when they appear in a file name, a
/// VM or kernel name, or a device name (lower case).
const HINTS: [(&str, Arch); 17] = [
    ("x86_64", Arch::X86_64),
    ("x86-64", Arch::X86_64),
    ("amd64", Arch::X86_64),
    ("bzimage", Arch::X86_64),
    ("apic", Arch::X86_64),
    ("hpet", Arch::X86_64),
    ("aarch64", Arch::Aarch64),
    ("arm64", Arch::Aarch64),
    ("gic", Arch::Aarch64),
    ("pl011", Arch::Aarch64),
    ("pl031", Arch::Aarch64),
    ("riscv", Arch::Riscv64),
    ("rv64", Arch::Riscv64),
    ("plic", Arch::Riscv64),
    ("clint", Arch::Riscv64),
    ("aclint", Arch::Riscv64),
    ("sifive", Arch::Riscv64),
];

/// The first architecture word in `text`.
fn hint(text: &str) -> Option<(Arch, &'static str)> {
    let lower = text.to_ascii_lowercase();
    HINTS
        .iter()
        .find(|(word, _)| lower.contains(word))
        .map(|&(word, arch)| (arch, word))
}

/// Picks the architecture: `--arch` if given, else the config's `[base]
/// arch` (an extension), else the first hint in the file name, `[base]
/// name`, `[kernel] kernel_path` and the device names, else x86_64.
/// Returns it with the reason, for the report.
///
/// ```
/// use npt_examples::{Arch, VmConfig, choose_arch};
///
/// let cfg = VmConfig::parse("[kernel]\nmemory_regions = []\n")?;
/// let (arch, why) = choose_arch(&cfg, None, Some("configs/vms/linux-aarch64-qemu.toml"));
/// assert_eq!(arch, Arch::Aarch64);
/// assert!(why.contains("file name"), "{why}");
/// # Ok::<(), npt_examples::DemoError>(())
/// ```
pub fn choose_arch(cfg: &VmConfig, cli: Option<Arch>, path: Option<&str>) -> (Arch, String) {
    if let Some(arch) = cli {
        return (arch, "given with --arch".into());
    }
    if let Some(arch) = cfg.arch {
        return (arch, "from [base] arch (an extension of this demo)".into());
    }
    let file = path.map(|p| {
        std::path::Path::new(p)
            .file_name()
            .map_or_else(|| p.to_string(), |n| n.to_string_lossy().into_owned())
    });
    let mut places: Vec<(String, String)> = Vec::new();
    if let Some(f) = file {
        places.push((format!("the file name `{f}`"), f));
    }
    places.push((format!("[base] name `{}`", cfg.name), cfg.name.clone()));
    if let Some(k) = &cfg.kernel_path {
        places.push((format!("[kernel] kernel_path `{k}`"), k.clone()));
    }
    let d = &cfg.devices;
    for (i, dev) in d.passthrough_devices.iter().enumerate() {
        places.push((
            format!("passthrough_devices[{i}] `{}`", dev.name),
            dev.name.clone(),
        ));
    }
    for (i, dev) in d.emu_devices.iter().enumerate() {
        places.push((format!("emu_devices[{i}] `{}`", dev.name), dev.name.clone()));
    }
    for (place, text) in &places {
        if let Some((arch, word)) = hint(text) {
            return (
                arch,
                format!("assumed: the config has no arch key and {place} mentions `{word}`"),
            );
        }
    }
    (
        Arch::X86_64,
        "assumed: the config has no arch key and names nothing architecture-specific; x86_64 is the default".into(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_config_parses() {
        let cfg = VmConfig::builtin().unwrap();
        assert_eq!(cfg.name, "quickstart-pc");
        assert_eq!(cfg.arch, Some(Arch::X86_64));
        assert_eq!(cfg.memory_regions.len(), 6);
        assert_eq!(cfg.memory_regions[5], [0xfff0_0000, 0x10_0000, 0x5, 4]);
        assert_eq!(cfg.lazy_ram, Some((0x1_0000_0000, 0x400_0000)));
        assert_eq!(cfg.entry_point, Some(0x10_0000));
    }

    #[test]
    fn shape_errors_name_the_record() {
        let e = VmConfig::parse("[kernel]\nmemory_regions = [[0, 0x1000, 7, 0], [0, 1]]\n")
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "memory_regions[1]: expected 4 values [base_paddr, size, flags, map_type], found 2"
        );
        let e = VmConfig::parse("[kernel]\nmemory_regions = [[0, -4096, 7, 0]]\n").unwrap_err();
        assert_eq!(e.to_string(), "memory_regions[0]: size: -4096 is negative");
        let e =
            VmConfig::parse("[base]\narch = 'mips'\n[kernel]\nmemory_regions = []\n").unwrap_err();
        assert!(e.to_string().contains("`mips`"), "{e}");
        let e =
            VmConfig::parse("[kernel]\nmemory_regions = []\n[demo]\nlazy_ram = [1]\n").unwrap_err();
        assert!(matches!(e, DemoError::LazyRamShape { len: 1 }));
    }

    #[test]
    fn toml_errors_name_the_line() {
        let e = VmConfig::parse("[kernel]\nmemory_regions = [[0, 0x1000, 7, 0]\n").unwrap_err();
        assert!(matches!(e, DemoError::Toml(_)));
        assert!(e.to_string().contains("line 2"), "{e}");
        let e = VmConfig::parse("[base]\nname = 'x'\n").unwrap_err();
        assert!(e.to_string().contains("kernel"), "{e}");
    }

    #[test]
    fn devices_deserialize_without_glue() {
        let cfg = VmConfig::parse(
            r#"
[kernel]
memory_regions = []
[devices]
interrupt_mode = "passthrough"
passthrough_devices = [["IO APIC", 0xfec0_0000, 0xfec0_0000, 0x1000, 0x1]]
passthrough_addresses = [[0xfed0_0000, 0x1000]]
emu_devices = [["gicd", 0x0800_0000, 0x1_0000, 0, 0x21, [1, 2]], ["uart", 0x0900_0000, 0x1000, 33, 2, []]]
"#,
        )
        .unwrap();
        let d = &cfg.devices;
        assert_eq!(d.passthrough_devices[0].name, "IO APIC");
        assert_eq!(d.passthrough_devices[0].base_hpa, 0xfec0_0000);
        assert_eq!(d.passthrough_addresses[0].length, 0x1000);
        assert_eq!(d.emu_devices[0].emu_type, 0x21);
        assert_eq!(d.emu_devices[0].config, vec![1, 2]);
        assert_eq!(d.emu_devices[1].irq, 33);
        // A record of the wrong shape is refused by the TOML reader, with its line.
        let e = VmConfig::parse(
            "[kernel]\nmemory_regions = []\n[devices]\npassthrough_addresses = [[0x1000]]\n",
        )
        .unwrap_err();
        assert!(e.to_string().contains("line 4"), "{e}");
        // No [devices] at all: empty.
        assert!(VmConfig::builtin().unwrap().devices.is_empty());
    }

    #[test]
    fn arch_is_chosen_with_a_reason() {
        let cfg = VmConfig::parse("[base]\nname = 'linux'\n[kernel]\nmemory_regions = []\n[devices]\nemu_devices = [['gppt-gicd', 0x800_0000, 0x1_0000, 0, 0x21, []]]\n").unwrap();
        let (arch, why) = choose_arch(&cfg, None, Some("vm.toml"));
        assert_eq!(arch, Arch::Aarch64);
        assert!(why.contains("emu_devices[0] `gppt-gicd`"), "{why}");
        assert_eq!(
            choose_arch(&cfg, Some(Arch::Riscv64), None).0,
            Arch::Riscv64
        );
        let plain = VmConfig::parse("[kernel]\nmemory_regions = []\n").unwrap();
        let (arch, why) = choose_arch(&plain, None, None);
        assert_eq!(arch, Arch::X86_64);
        assert!(why.contains("default"), "{why}");
        let (arch, why) = choose_arch(&plain, None, Some("configs/nimbos-riscv64.toml"));
        assert_eq!(arch, Arch::Riscv64);
        assert!(why.contains("the file name `nimbos-riscv64.toml`"), "{why}");
    }

    #[test]
    fn arch_names() {
        for arch in Arch::ALL {
            assert_eq!(arch.name().parse::<Arch>().unwrap(), arch);
        }
        assert_eq!("arm64".parse::<Arch>().unwrap(), Arch::Aarch64);
    }
}

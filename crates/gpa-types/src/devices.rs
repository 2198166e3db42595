//! The `[devices]` records of AxVisor VM configs.
//!
//! Besides `memory_regions` (see [`RegionConfig`](crate::RegionConfig)), an
//! AxVisor VM config lists the guest's devices in a `[devices]` table:
//!
//! ```toml
//! [devices]
//! # [name, base_gpa, base_hpa, length, irq]: host device windows the guest owns
//! passthrough_devices = [["IO APIC", 0xfec0_0000, 0xfec0_0000, 0x1000, 1]]
//! # [base_gpa, length]: host ranges mapped at GPA == HPA
//! passthrough_addresses = [[0x0900_0000, 0x1000]]
//! # [name, base_gpa, length, irq, emu_type, [config...]]: trapped and emulated
//! emu_devices = [["gicd", 0x0800_0000, 0x1_0000, 0, 0x21, []]]
//! ```
//!
//! The records here hold those entries as typed values; with feature
//! `serde` they deserialize straight from that TOML (each record is a
//! sequence, in the field order above; other keys of the table, such as
//! `interrupt_mode`, are ignored). [`DevicesConfig::check`] checks every
//! record and names the section, index and field of the first bad one.
//!
//! Names are heap strings (`alloc::string::String`), as the file holds them.

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

use crate::{GuestPhysAddr, GuestPhysAddrRange};

const PAGE: u64 = 0x1000;

/// A list of the `[devices]` table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeviceSection {
    /// `passthrough_devices`.
    PassthroughDevices,
    /// `passthrough_addresses`.
    PassthroughAddresses,
    /// `emu_devices`.
    EmuDevices,
}

impl fmt::Display for DeviceSection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::PassthroughDevices => "passthrough_devices",
            Self::PassthroughAddresses => "passthrough_addresses",
            Self::EmuDevices => "emu_devices",
        })
    }
}

/// A field of a `[devices]` record, for error reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeviceField {
    /// `name`.
    Name,
    /// `base_gpa`: the guest-physical base.
    BaseGpa,
    /// `base_hpa`: the host-physical base (pass-through devices).
    BaseHpa,
    /// `length` in bytes.
    Length,
    /// `irq`.
    Irq,
    /// `emu_type` (emulated devices).
    EmuType,
    /// The device model's `config` values (emulated devices).
    Config,
}

impl fmt::Display for DeviceField {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Name => "name",
            Self::BaseGpa => "base_gpa",
            Self::BaseHpa => "base_hpa",
            Self::Length => "length",
            Self::Irq => "irq",
            Self::EmuType => "emu_type",
            Self::Config => "config",
        })
    }
}

/// Why a `[devices]` record was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceError {
    /// `length` is zero.
    ZeroLength,
    /// An address or the length is not a multiple of 4 KiB.
    NotAligned {
        /// Which field.
        field: DeviceField,
        /// Its value.
        value: u64,
    },
    /// `base + length` does not fit in the address width (a `usize`).
    Overflow {
        /// The base field (`base_gpa` or `base_hpa`).
        field: DeviceField,
        /// The base.
        base: u64,
        /// The length.
        length: u64,
    },
}

impl DeviceError {
    /// The field the error is about.
    pub const fn field(&self) -> DeviceField {
        match self {
            Self::ZeroLength => DeviceField::Length,
            Self::NotAligned { field, .. } | Self::Overflow { field, .. } => *field,
        }
    }
}

impl fmt::Display for DeviceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::ZeroLength => write!(f, "length: must not be zero"),
            Self::NotAligned { field, value } => {
                write!(f, "{field}: {value:#x} is not a multiple of 4 KiB")
            }
            Self::Overflow {
                field,
                base,
                length,
            } => write!(
                f,
                "{field}: {base:#x} + length {length:#x} overflows the address width"
            ),
        }
    }
}

impl core::error::Error for DeviceError {}

impl From<DeviceError> for axerrno::AxErrorKind {
    fn from(_: DeviceError) -> Self {
        axerrno::AxErrorKind::InvalidInput
    }
}

/// Checks one `base` field and the length.
fn check_window(field: DeviceField, base: u64, length: u64) -> Result<(), DeviceError> {
    if length == 0 {
        return Err(DeviceError::ZeroLength);
    }
    if base % PAGE != 0 {
        return Err(DeviceError::NotAligned { field, value: base });
    }
    if length % PAGE != 0 {
        return Err(DeviceError::NotAligned {
            field: DeviceField::Length,
            value: length,
        });
    }
    let fits = usize::try_from(base)
        .ok()
        .zip(usize::try_from(length).ok())
        .and_then(|(b, l)| b.checked_add(l));
    if fits.is_none() {
        return Err(DeviceError::Overflow {
            field,
            base,
            length,
        });
    }
    Ok(())
}

/// `[base, base + length)` as a guest range, if it fits in a `usize`.
fn gpa_range(base: u64, length: u64) -> Option<GuestPhysAddrRange> {
    let start = usize::try_from(base).ok()?;
    let end = start.checked_add(usize::try_from(length).ok()?)?;
    Some(GuestPhysAddrRange::new(
        GuestPhysAddr::from_usize(start),
        GuestPhysAddr::from_usize(end),
    ))
}

/// `[name, base_gpa, base_hpa, length, irq]`: a host device window passed
/// through to the guest (mapped with the device memory type).
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Deserialize))]
pub struct PassthroughDevice {
    /// A name for reports (AxVisor uses device-tree paths or plain names).
    pub name: String,
    /// Guest-physical base, 4 KiB aligned.
    pub base_gpa: u64,
    /// Host-physical base, 4 KiB aligned.
    pub base_hpa: u64,
    /// Length in bytes, a non-zero multiple of 4 KiB.
    pub length: u64,
    /// Interrupt number (not used for the address space).
    pub irq: u64,
}

impl PassthroughDevice {
    /// Checks the addresses and length (4 KiB aligned, non-zero, the ends
    /// fit in a `usize`).
    pub fn check(&self) -> Result<(), DeviceError> {
        check_window(DeviceField::BaseGpa, self.base_gpa, self.length)?;
        check_window(DeviceField::BaseHpa, self.base_hpa, self.length)
    }

    /// The guest-physical range, or `None` if its end does not fit.
    pub fn gpa_range(&self) -> Option<GuestPhysAddrRange> {
        gpa_range(self.base_gpa, self.length)
    }
}

/// `[base_gpa, length]`: a host range passed through at GPA == HPA (mapped
/// with the device memory type).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Deserialize))]
pub struct PassthroughAddress {
    /// Base address, guest and host, 4 KiB aligned.
    pub base_gpa: u64,
    /// Length in bytes, a non-zero multiple of 4 KiB.
    pub length: u64,
}

impl PassthroughAddress {
    /// Checks the address and length.
    pub fn check(&self) -> Result<(), DeviceError> {
        check_window(DeviceField::BaseGpa, self.base_gpa, self.length)
    }

    /// The guest-physical range, or `None` if its end does not fit.
    pub fn gpa_range(&self) -> Option<GuestPhysAddrRange> {
        gpa_range(self.base_gpa, self.length)
    }
}

/// `[name, base_gpa, length, irq, emu_type, [config...]]`: a device the
/// hypervisor emulates; its window stays unmapped so accesses trap.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Deserialize))]
pub struct EmulatedDevice {
    /// A name for reports.
    pub name: String,
    /// Guest-physical base, 4 KiB aligned.
    pub base_gpa: u64,
    /// Length in bytes, a non-zero multiple of 4 KiB.
    pub length: u64,
    /// Interrupt number (not used for the address space).
    pub irq: u64,
    /// The device model, in AxVisor's numbering (not interpreted here).
    pub emu_type: u64,
    /// Values for the device model (not interpreted here).
    #[cfg_attr(feature = "serde", serde(default))]
    pub config: Vec<u64>,
}

impl EmulatedDevice {
    /// Checks the address and length.
    pub fn check(&self) -> Result<(), DeviceError> {
        check_window(DeviceField::BaseGpa, self.base_gpa, self.length)
    }

    /// The guest-physical range, or `None` if its end does not fit.
    pub fn gpa_range(&self) -> Option<GuestPhysAddrRange> {
        gpa_range(self.base_gpa, self.length)
    }
}

/// The `[devices]` table of an AxVisor VM config. Missing lists are empty.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(default))]
pub struct DevicesConfig {
    /// `passthrough_devices`.
    pub passthrough_devices: Vec<PassthroughDevice>,
    /// `passthrough_addresses`.
    pub passthrough_addresses: Vec<PassthroughAddress>,
    /// `emu_devices`.
    pub emu_devices: Vec<EmulatedDevice>,
}

impl DevicesConfig {
    /// Checks every record; the first bad one is reported with its section
    /// and index (the error names the field).
    pub fn check(&self) -> Result<(), (DeviceSection, usize, DeviceError)> {
        for (i, d) in self.passthrough_devices.iter().enumerate() {
            d.check()
                .map_err(|e| (DeviceSection::PassthroughDevices, i, e))?;
        }
        for (i, d) in self.passthrough_addresses.iter().enumerate() {
            d.check()
                .map_err(|e| (DeviceSection::PassthroughAddresses, i, e))?;
        }
        for (i, d) in self.emu_devices.iter().enumerate() {
            d.check().map_err(|e| (DeviceSection::EmuDevices, i, e))?;
        }
        Ok(())
    }

    /// Whether all three lists are empty.
    pub fn is_empty(&self) -> bool {
        self.passthrough_devices.is_empty()
            && self.passthrough_addresses.is_empty()
            && self.emu_devices.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::ToString;
    use alloc::vec;

    fn apic() -> PassthroughDevice {
        PassthroughDevice {
            name: "IO APIC".into(),
            base_gpa: 0xfec0_0000,
            base_hpa: 0xfec0_0000,
            length: 0x1000,
            irq: 1,
        }
    }

    #[test]
    fn good_records_pass() {
        let cfg = DevicesConfig {
            passthrough_devices: vec![apic()],
            passthrough_addresses: vec![PassthroughAddress {
                base_gpa: 0x900_0000,
                length: 0x1000,
            }],
            emu_devices: vec![EmulatedDevice {
                name: "gicd".into(),
                base_gpa: 0x800_0000,
                length: 0x1_0000,
                irq: 0,
                emu_type: 0x21,
                config: vec![],
            }],
        };
        assert_eq!(cfg.check(), Ok(()));
        assert_eq!(
            cfg.passthrough_devices[0].gpa_range().map(|r| r.size()),
            Some(0x1000)
        );
        assert!(!cfg.is_empty());
        assert!(DevicesConfig::default().is_empty());
    }

    #[test]
    fn errors_name_section_index_and_field() {
        let mut bad = apic();
        bad.base_hpa = 0xfec0_0800;
        let cfg = DevicesConfig {
            passthrough_devices: vec![apic(), bad],
            ..DevicesConfig::default()
        };
        let (section, index, e) = cfg.check().unwrap_err();
        assert_eq!(
            (section, index, e.field()),
            (DeviceSection::PassthroughDevices, 1, DeviceField::BaseHpa)
        );
        assert_eq!(
            e.to_string(),
            "base_hpa: 0xfec00800 is not a multiple of 4 KiB"
        );
        assert_eq!(section.to_string(), "passthrough_devices");

        let cfg = DevicesConfig {
            passthrough_addresses: vec![PassthroughAddress {
                base_gpa: 0x1000,
                length: 0,
            }],
            ..DevicesConfig::default()
        };
        let (section, index, e) = cfg.check().unwrap_err();
        assert_eq!(
            (section, index, e),
            (
                DeviceSection::PassthroughAddresses,
                0,
                DeviceError::ZeroLength
            )
        );
        let emu = EmulatedDevice {
            name: "uart".into(),
            base_gpa: 0x1000,
            length: 0x100,
            irq: 4,
            emu_type: 2,
            config: vec![],
        };
        assert_eq!(
            emu.check(),
            Err(DeviceError::NotAligned {
                field: DeviceField::Length,
                value: 0x100
            })
        );
        let far = PassthroughAddress {
            base_gpa: !0xfff,
            length: 0x2000,
        };
        assert_eq!(
            far.check().map_err(|e| e.field()),
            Err(DeviceField::BaseGpa)
        );
        assert_eq!(far.gpa_range(), None);
    }

    #[cfg(feature = "serde")]
    #[test]
    fn deserializes_from_a_sequence() {
        use serde::Deserialize;
        use serde::de::value::{Error, SeqDeserializer};
        let seq = SeqDeserializer::<_, Error>::new([0x900_0000u64, 0x1000].into_iter());
        let rec = PassthroughAddress::deserialize(seq).unwrap();
        assert_eq!(
            rec,
            PassthroughAddress {
                base_gpa: 0x900_0000,
                length: 0x1000
            }
        );
        let short = SeqDeserializer::<_, Error>::new([0x900_0000u64].into_iter());
        assert!(PassthroughAddress::deserialize(short).is_err());
    }
}

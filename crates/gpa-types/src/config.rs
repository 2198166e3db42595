//! The memory-region record of AxVisor VM configs.
//!
//! AxVisor describes guest memory as
//! `memory_regions = [[base_paddr, size, flags, map_type], ...]`.
//! [`RegionConfig::from_raw`] checks one such record and turns it into typed
//! values, naming the offending field when it cannot.

use core::fmt;

use crate::{GuestPhysAddr, GuestPhysAddrRange, MappingFlags};

/// How a region's guest-physical range is backed.
///
/// Values 0..=2 are the ones AxVisor's configs use today; 3 (MMIO) and 4
/// (ROM) are this crate's extensions, which AxVisor does not read: a config
/// meant for AxVisor itself describes devices in its `[devices]` table
/// instead ([`DevicesConfig`](crate::DevicesConfig)).
#[repr(u8)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MapType {
    /// `0`, `MAP_ALLOC`: RAM the hypervisor allocates and owns.
    Alloc = 0,
    /// `1`, `MAP_IDENTICAL`: GPA == HPA, host memory placed at its own address.
    Identical = 1,
    /// `2`, `MAP_RESERVED`: a reserved host range identity-mapped, not owned.
    Reserved = 2,
    /// `3` (extension), MMIO: device space, unmapped (so accesses exit) or passed through
    /// with the device memory type.
    Mmio = 3,
    /// `4` (extension), ROM: read-only (and optionally executable) memory such as firmware.
    Rom = 4,
}

impl MapType {
    /// The kind for a raw `map_type` value, if it is one.
    pub const fn from_raw(raw: u64) -> Option<Self> {
        match raw {
            0 => Some(Self::Alloc),
            1 => Some(Self::Identical),
            2 => Some(Self::Reserved),
            3 => Some(Self::Mmio),
            4 => Some(Self::Rom),
            _ => None,
        }
    }

    /// The raw config value.
    pub const fn raw(self) -> u64 {
        self as u64
    }
}

/// A field of a region record, for error reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ConfigField {
    /// `base_paddr`, the first field.
    Base,
    /// `size`, the second field.
    Size,
    /// `flags`, the third field.
    Flags,
    /// `map_type`, the fourth field.
    MapType,
}

impl fmt::Display for ConfigField {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Base => "base_paddr",
            Self::Size => "size",
            Self::Flags => "flags",
            Self::MapType => "map_type",
        })
    }
}

/// Why a region record was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigError {
    /// The size is zero.
    ZeroSize,
    /// `base_paddr` or `size` is not a multiple of 4 KiB.
    NotAligned {
        /// Which of the two.
        field: ConfigField,
        /// Its value.
        value: u64,
    },
    /// `base_paddr + size` does not fit in the address width.
    Overflow {
        /// The base.
        base: u64,
        /// The size.
        size: u64,
    },
    /// `flags` has bits this crate does not define.
    UnknownFlags {
        /// The whole flags value.
        value: u64,
        /// The bits that are not defined.
        unknown: u64,
    },
    /// `map_type` is not one of the values of [`MapType`].
    UnknownMapType {
        /// The value.
        value: u64,
    },
}

impl ConfigError {
    /// The field the error is about.
    pub const fn field(&self) -> ConfigField {
        match self {
            Self::ZeroSize | Self::Overflow { .. } => ConfigField::Size,
            Self::NotAligned { field, .. } => *field,
            Self::UnknownFlags { .. } => ConfigField::Flags,
            Self::UnknownMapType { .. } => ConfigField::MapType,
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::ZeroSize => write!(f, "size: must not be zero"),
            Self::NotAligned { field, value } => {
                write!(f, "{field}: {value:#x} is not a multiple of 4 KiB")
            }
            Self::Overflow { base, size } => write!(
                f,
                "size: base_paddr {base:#x} + size {size:#x} overflows the address width"
            ),
            Self::UnknownFlags { value, unknown } => write!(
                f,
                "flags: {value:#x} has undefined bits {unknown:#x} (defined: bit0 read, bit1 write, bit2 execute, bit3 user, bit4 device, bit5 uncached)"
            ),
            Self::UnknownMapType { value } => write!(
                f,
                "map_type: {value} is not one of 0 (alloc), 1 (identical), 2 (reserved), 3 (mmio), 4 (rom)"
            ),
        }
    }
}

impl core::error::Error for ConfigError {}

impl From<ConfigError> for axerrno::AxErrorKind {
    fn from(_: ConfigError) -> Self {
        axerrno::AxErrorKind::InvalidInput
    }
}

/// One checked `[base_paddr, size, flags, map_type]` record.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RegionConfig {
    /// First guest-physical address of the region, 4 KiB aligned.
    pub base: GuestPhysAddr,
    /// Length in bytes, a non-zero multiple of 4 KiB.
    pub size: usize,
    /// Guest access rights and attributes.
    pub flags: MappingFlags,
    /// How the region is backed.
    pub map_type: MapType,
}

impl RegionConfig {
    /// Checks a raw record.
    ///
    /// `flags` uses the bit layout of [`MappingFlags`], which AxVisor's
    /// configs share: bit 0 read, bit 1 write, bit 2 execute, bit 3 user,
    /// bit 4 device, bit 5 uncached. Any other bit is an error, as is a
    /// zero or unaligned size, an unaligned base, a region whose end does not
    /// fit in a `usize`, and an unknown `map_type`.
    pub fn from_raw(base: u64, size: u64, flags: u64, map_type: u64) -> Result<Self, ConfigError> {
        check_range(base, size)?;
        let known = MappingFlags::all().bits() as u64;
        if flags & !known != 0 {
            return Err(ConfigError::UnknownFlags {
                value: flags,
                unknown: flags & !known,
            });
        }
        let map_type =
            MapType::from_raw(map_type).ok_or(ConfigError::UnknownMapType { value: map_type })?;
        // `check_range` proved both fit in a `usize`.
        let (base, size) = (base as usize, size as usize);
        Ok(Self {
            base: GuestPhysAddr::from_usize(base),
            size,
            flags: MappingFlags::from_bits_truncate(flags as usize),
            map_type,
        })
    }

    /// Checks a record built by hand (its fields are public) by the rules of
    /// [`RegionConfig::from_raw`]: a non-zero size, 4 KiB alignment of base
    /// and size, an end that fits in a `usize`, and only defined flag bits.
    /// A record from [`RegionConfig::from_raw`] always passes.
    pub fn validate(&self) -> Result<(), ConfigError> {
        check_range(self.base.as_usize() as u64, self.size as u64)?;
        let unknown = self.flags.bits() & !MappingFlags::all().bits();
        if unknown != 0 {
            return Err(ConfigError::UnknownFlags {
                value: self.flags.bits() as u64,
                unknown: unknown as u64,
            });
        }
        Ok(())
    }

    /// The guest-physical range the region covers, or `None` if
    /// `base + size` does not fit in a `usize` (possible only in a record
    /// built by hand; [`RegionConfig::from_raw`] refuses it).
    pub fn range(&self) -> Option<GuestPhysAddrRange> {
        let end = self.base.as_usize().checked_add(self.size)?;
        Some(GuestPhysAddrRange::new(
            self.base,
            GuestPhysAddr::from_usize(end),
        ))
    }

    /// The last address of the region (inclusive), or `None` for a size of
    /// zero or a region whose end does not fit in a `usize` (both possible
    /// only in a record built by hand).
    pub fn last(&self) -> Option<GuestPhysAddr> {
        let len = self.size.checked_sub(1)?;
        let last = self.base.as_usize().checked_add(len)?;
        Some(GuestPhysAddr::from_usize(last))
    }
}

/// The range rules shared by [`RegionConfig::from_raw`] and
/// [`RegionConfig::validate`].
fn check_range(base: u64, size: u64) -> Result<(), ConfigError> {
    if size == 0 {
        return Err(ConfigError::ZeroSize);
    }
    if base % 0x1000 != 0 {
        return Err(ConfigError::NotAligned {
            field: ConfigField::Base,
            value: base,
        });
    }
    if size % 0x1000 != 0 {
        return Err(ConfigError::NotAligned {
            field: ConfigField::Size,
            value: size,
        });
    }
    let (Ok(base_us), Ok(size_us)) = (usize::try_from(base), usize::try_from(size)) else {
        return Err(ConfigError::Overflow { base, size });
    };
    if base_us.checked_add(size_us).is_none() {
        return Err(ConfigError::Overflow { base, size });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::string::ToString;

    #[test]
    fn accepts_axvisor_records() {
        let r = RegionConfig::from_raw(0x8000_0000, 0x1000_0000, 0x7, 1).unwrap();
        assert_eq!(r.base, GuestPhysAddr::from(0x8000_0000));
        assert_eq!(r.size, 0x1000_0000);
        assert_eq!(
            r.flags,
            MappingFlags::READ | MappingFlags::WRITE | MappingFlags::EXECUTE
        );
        assert_eq!(r.map_type, MapType::Identical);
        assert_eq!(r.range().unwrap().end, GuestPhysAddr::from(0x9000_0000));
        assert_eq!(r.last(), Some(GuestPhysAddr::from(0x8fff_ffff)));
    }

    #[test]
    fn every_map_type_value() {
        let kinds = [
            MapType::Alloc,
            MapType::Identical,
            MapType::Reserved,
            MapType::Mmio,
            MapType::Rom,
        ];
        for (raw, kind) in kinds.into_iter().enumerate() {
            assert_eq!(
                RegionConfig::from_raw(0, 0x1000, 1, raw as u64)
                    .unwrap()
                    .map_type,
                kind
            );
            assert_eq!(kind.raw(), raw as u64);
        }
    }

    #[test]
    fn rejects_each_bad_field() {
        assert_eq!(
            RegionConfig::from_raw(0, 0, 7, 0),
            Err(ConfigError::ZeroSize)
        );
        let e = RegionConfig::from_raw(0x1234, 0x1000, 7, 0).unwrap_err();
        assert_eq!(
            e,
            ConfigError::NotAligned {
                field: ConfigField::Base,
                value: 0x1234
            }
        );
        assert_eq!(e.field(), ConfigField::Base);
        let e = RegionConfig::from_raw(0x1000, 0x1800, 7, 0).unwrap_err();
        assert_eq!(
            e,
            ConfigError::NotAligned {
                field: ConfigField::Size,
                value: 0x1800
            }
        );
        let e = RegionConfig::from_raw(0xffff_ffff_ffff_f000, 0x2000, 7, 0).unwrap_err();
        assert!(matches!(e, ConfigError::Overflow { .. }));
        let e = RegionConfig::from_raw(0, 0x1000, 0x47, 0).unwrap_err();
        assert_eq!(
            e,
            ConfigError::UnknownFlags {
                value: 0x47,
                unknown: 0x40
            }
        );
        let e = RegionConfig::from_raw(0, 0x1000, 7, 5).unwrap_err();
        assert_eq!(e, ConfigError::UnknownMapType { value: 5 });
        assert_eq!(e.field(), ConfigField::MapType);
    }

    #[test]
    fn errors_name_field_and_value() {
        let msg = RegionConfig::from_raw(0x1234, 0x1000, 7, 0)
            .unwrap_err()
            .to_string();
        assert!(msg.starts_with("base_paddr: 0x1234"), "{msg}");
        let msg = RegionConfig::from_raw(0, 0x1000, 7, 9)
            .unwrap_err()
            .to_string();
        assert!(msg.starts_with("map_type: 9"), "{msg}");
    }

    #[test]
    fn range_and_last_are_total_on_hand_built_records() {
        let mut r = RegionConfig::from_raw(0x1000, 0x1000, 0x3, 0).unwrap();
        r.size = 0;
        assert_eq!(r.last(), None);
        assert_eq!(r.validate(), Err(ConfigError::ZeroSize));
        assert_eq!(r.range().map(|g| g.size()), Some(0));
        r.base = GuestPhysAddr::from_usize(usize::MAX - 0xfff);
        r.size = 0x2000;
        assert_eq!(r.range(), None);
        assert_eq!(r.last(), None);
        assert!(matches!(r.validate(), Err(ConfigError::Overflow { .. })));
        r.size = 0x1000;
        assert_eq!(r.last(), Some(GuestPhysAddr::from_usize(usize::MAX)));
        assert_eq!(r.range(), None, "the end is one past usize::MAX");
        r.base = GuestPhysAddr::from_usize(0);
        r.size = 1;
        assert_eq!(r.last(), Some(GuestPhysAddr::from_usize(0)));
    }

    #[test]
    fn validate_names_the_field_of_a_hand_built_record() {
        let good = RegionConfig::from_raw(0x2000, 0x3000, 0x3, 3).unwrap();
        assert_eq!(good.validate(), Ok(()));
        let mut r = good;
        r.base = GuestPhysAddr::from_usize(0x2800);
        assert_eq!(
            r.validate(),
            Err(ConfigError::NotAligned {
                field: ConfigField::Base,
                value: 0x2800
            })
        );
        let mut r = good;
        r.size = 0x1800;
        assert_eq!(r.validate().map_err(|e| e.field()), Err(ConfigField::Size));
        let mut r = good;
        r.flags = MappingFlags::from_bits_retain(0x403);
        assert_eq!(
            r.validate(),
            Err(ConfigError::UnknownFlags {
                value: 0x403,
                unknown: 0x400
            })
        );
    }
}

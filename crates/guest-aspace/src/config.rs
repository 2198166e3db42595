//! Building a space from AxVisor-style `memory_regions` records.

use gpa_types::{ConfigField, GuestPhysAddrRange, MapType, MappingFlags, RegionConfig};
use npt_entry::NptFormat;
use npt_table::{FrameAllocator, TlbFlush};

use crate::error::{AspaceError, AspaceResult, PlacementError};
use crate::space::GuestAddrSpace;

/// How config records become regions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ConfigOptions {
    /// `MAP_ALLOC` regions are populated on faults instead of up front.
    pub lazy_alloc: bool,
    /// `MAP_IDENTICAL` allocates host memory and places it at GPA == HPA,
    /// as AxVisor does (the configured base is then only a hint and the
    /// region lands where the memory is). When false (the default),
    /// `MAP_IDENTICAL` passes the configured host range through unowned.
    pub allocate_identical: bool,
}

impl<F: NptFormat, A: FrameAllocator> GuestAddrSpace<F, A> {
    /// Builds a space over `window` from raw `[base, size, flags, map_type]`
    /// records. Kinds: 0 `MAP_ALLOC` (RAM), 1 `MAP_IDENTICAL`, 2
    /// `MAP_RESERVED` (identity pass-through), 3 MMIO (left unmapped for
    /// emulation), 4 ROM (readable, executable if the flags say so; a write
    /// bit is ignored: ROM is never guest-writable). An
    /// error names the record's index and field.
    pub fn from_config(
        alloc: A,
        window: GuestPhysAddrRange,
        records: &[[u64; 4]],
        options: ConfigOptions,
    ) -> AspaceResult<(Self, TlbFlush)> {
        let mut space = Self::new(alloc, window)?;
        let mut flush = TlbFlush::none();
        for (index, raw) in records.iter().enumerate() {
            let cfg = RegionConfig::from_raw(raw[0], raw[1], raw[2], raw[3])
                .map_err(|error| AspaceError::Config { index, error })?;
            flush.merge(space.add_config(index, &cfg, options)?);
        }
        Ok((space, flush))
    }

    /// Adds one checked record; errors carry `index`.
    pub fn add_config(
        &mut self,
        index: usize,
        cfg: &RegionConfig,
        options: ConfigOptions,
    ) -> AspaceResult<TlbFlush> {
        let flags = cfg.flags;
        let result = match cfg.map_type {
            MapType::Alloc => self.add_ram(cfg.base, cfg.size, flags, options.lazy_alloc),
            MapType::Identical if options.allocate_identical => {
                self.add_identical_alloc(cfg.size, flags).map(|(_, f)| f)
            }
            MapType::Identical | MapType::Reserved => self.add_identical(cfg.base, cfg.size, flags),
            MapType::Mmio => self.add_mmio(cfg.base, cfg.size, None),
            MapType::Rom => self.add_rom(cfg.base, cfg.size, flags.contains(MappingFlags::EXECUTE)),
        };
        result.map_err(|e| {
            let (field, error) = match e {
                AspaceError::OutsideWindow { .. } => {
                    (ConfigField::Base, PlacementError::OutsideWindow)
                }
                AspaceError::Overlap { existing, .. } => {
                    (ConfigField::Base, PlacementError::Overlap(existing))
                }
                AspaceError::NoMemory => (ConfigField::Size, PlacementError::NoMemory),
                AspaceError::Table(npt_table::NptError::BadFlags(_)) => {
                    (ConfigField::Flags, PlacementError::Flags)
                }
                _ => (ConfigField::Base, PlacementError::Table),
            };
            AspaceError::ConfigPlacement {
                index,
                field,
                error,
            }
        })
    }
}

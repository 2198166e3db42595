//! Building a space from AxVisor-style `memory_regions` records.

use gpa_types::{ConfigField, GuestPhysAddrRange, MapType, MappingFlags, RegionConfig};
use npt_entry::NptFormat;
use npt_table::{FrameAllocator, NptError, TlbFlush};

use crate::error::{AspaceError, AspaceResult, PlacementError};
use crate::region::Backing;
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
    /// `MAP_RESERVED` (identity pass-through), and two of this crate's
    /// extensions: 3 MMIO (left unmapped for emulation) and 4 ROM.
    ///
    /// The flags apply the same way to every kind: they must grant some
    /// access and not write without read, and they become the region's
    /// rights. MMIO regions also get `DEVICE`, and a data access their flags
    /// forbid faults as a violation instead of exiting as MMIO; a ROM
    /// record must not ask for write access. An error names the record's
    /// index and field.
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

    /// Adds one record (see [`GuestAddrSpace::from_config`] for what each
    /// kind and the flags do); errors carry `index`. A record built by hand
    /// is first checked as [`RegionConfig::validate`] does
    /// ([`AspaceError::Config`]).
    pub fn add_config(
        &mut self,
        index: usize,
        cfg: &RegionConfig,
        options: ConfigOptions,
    ) -> AspaceResult<TlbFlush> {
        cfg.validate()
            .map_err(|error| AspaceError::Config { index, error })?;
        let placement = |field, error| AspaceError::ConfigPlacement {
            index,
            field,
            error,
        };
        let flags = cfg.flags;
        // Each kind checks its flags after the placement, as the direct calls
        // do; ROM also refuses write access.
        if cfg.map_type == MapType::Rom
            && flags.contains(MappingFlags::WRITE)
            && npt_entry::check_flags(flags).is_ok()
        {
            self.check_free(cfg.base.as_usize(), cfg.size)
                .map_err(|e| placement_of(cfg, e, &placement))?;
            return Err(placement(ConfigField::Flags, PlacementError::WritableRom));
        }
        let result = match cfg.map_type {
            MapType::Alloc => self.add_ram(cfg.base, cfg.size, flags, options.lazy_alloc),
            MapType::Identical if options.allocate_identical => {
                return self
                    .add_identical_alloc(cfg.size, flags)
                    .map(|(_, f)| f)
                    .map_err(|e| match e {
                        // The region lands where the allocator put the
                        // memory, not at `base_paddr`: say where.
                        AspaceError::OutsideWindow { gpa, len } => placement(
                            ConfigField::MapType,
                            PlacementError::LandedOutsideWindow { at: gpa, len },
                        ),
                        AspaceError::Overlap { gpa, existing } => placement(
                            ConfigField::MapType,
                            PlacementError::LandedOverlap { at: gpa, existing },
                        ),
                        e => placement_of(cfg, e, &placement),
                    });
            }
            MapType::Identical | MapType::Reserved => self.add_identical(cfg.base, cfg.size, flags),
            MapType::Mmio => self.add_mmio_with_flags(cfg.base, cfg.size, flags, None),
            MapType::Rom => self.add_owned(cfg.base.as_usize(), cfg.size, flags, Backing::Rom),
        };
        result.map_err(|e| placement_of(cfg, e, &placement))
    }
}

/// The field and reason of a placement failure of `cfg`.
fn placement_of(
    cfg: &RegionConfig,
    e: AspaceError,
    placement: &impl Fn(ConfigField, PlacementError) -> AspaceError,
) -> AspaceError {
    let base = cfg.base.as_usize();
    // Of two numbers, the one that equals the base is the base's fault.
    let base_or_size = |value: usize| {
        if value == base {
            ConfigField::Base
        } else {
            ConfigField::Size
        }
    };
    let (field, error) = match e {
        AspaceError::OutsideWindow { .. } => (ConfigField::Base, PlacementError::OutsideWindow),
        AspaceError::Overlap { existing, .. } => {
            (ConfigField::Base, PlacementError::Overlap(existing))
        }
        AspaceError::NoMemory | AspaceError::Table(NptError::NoMemory) => {
            (ConfigField::Size, PlacementError::NoMemory)
        }
        AspaceError::Table(NptError::BadFlags(_)) => (ConfigField::Flags, PlacementError::Flags),
        AspaceError::Table(t) => {
            let field = match t {
                NptError::ZeroLength => ConfigField::Size,
                NptError::GpaNotAligned { value, .. } => base_or_size(value),
                NptError::HpaNotAligned { hpa, .. } => base_or_size(hpa.as_usize()),
                NptError::GpaOutOfRange { gpa, .. } => base_or_size(gpa.as_usize()),
                // Host addresses of a config record are its guest ones
                // (identity): the base itself too wide, or only the end.
                NptError::HpaOutOfRange { pa_bits, .. } => {
                    if pa_bits < usize::BITS && base >> pa_bits != 0 {
                        ConfigField::Base
                    } else {
                        ConfigField::Size
                    }
                }
                _ => ConfigField::Base,
            };
            (field, PlacementError::Table(t))
        }
        // `validate` rules these out; named anyway.
        AspaceError::ZeroSize => (
            ConfigField::Size,
            PlacementError::Table(NptError::ZeroLength),
        ),
        AspaceError::NotAligned { value, align } => (
            base_or_size(value),
            PlacementError::Table(NptError::GpaNotAligned { value, align }),
        ),
        // Not produced by adding a region.
        other => return other,
    };
    placement(field, error)
}

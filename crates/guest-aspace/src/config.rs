//! Building a space from an AxVisor VM config: its `memory_regions`
//! records and its `[devices]` table.

use gpa_types::{
    ConfigField, DeviceField, DeviceSection, DevicesConfig, GuestPhysAddr, GuestPhysAddrRange,
    HostPhysAddr, MapType, MappingFlags, RegionConfig,
};
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

    /// Builds a space over `window` from a whole AxVisor VM config: the
    /// `memory_regions` records (as [`GuestAddrSpace::from_config`]), then
    /// the `[devices]` table (as [`GuestAddrSpace::add_devices`]). An error
    /// names the section (`memory_regions[i]` or `[devices] LIST[i]`) and
    /// the field.
    ///
    /// ```
    /// use guest_aspace::{ConfigOptions, GuestAddrSpace, GuestPhysAddrRange, HostFrameAllocator};
    /// use guest_aspace::gpa_types::{DevicesConfig, PassthroughDevice};
    /// use guest_aspace::npt_entry::ept::Ept4;
    ///
    /// let alloc = HostFrameAllocator::new();
    /// let window = GuestPhysAddrRange::from_start_size(0.into(), 1 << 32);
    /// let devices = DevicesConfig {
    ///     passthrough_devices: vec![PassthroughDevice {
    ///         name: "IO APIC".into(),
    ///         base_gpa: 0xfec0_0000,
    ///         base_hpa: 0xfec0_0000,
    ///         length: 0x1000,
    ///         irq: 1,
    ///     }],
    ///     ..DevicesConfig::default()
    /// };
    /// let records = [[0x0, 0x100_0000, 0x7, 0]];
    /// let (space, flush) = GuestAddrSpace::<Ept4, _>::from_vm_config(
    ///     &alloc, window, &records, &devices, ConfigOptions::default(),
    /// ).unwrap();
    /// flush.ignore();
    /// assert_eq!(space.regions().count(), 2);
    /// ```
    pub fn from_vm_config(
        alloc: A,
        window: GuestPhysAddrRange,
        memory_regions: &[[u64; 4]],
        devices: &DevicesConfig,
        options: ConfigOptions,
    ) -> AspaceResult<(Self, TlbFlush)> {
        let (mut space, mut flush) = Self::from_config(alloc, window, memory_regions, options)?;
        flush.merge(space.add_devices(devices)?);
        Ok((space, flush))
    }

    /// Adds the regions of a `[devices]` table:
    ///
    /// - `passthrough_devices` become device pass-through regions
    ///   ([`GuestAddrSpace::add_mmio`] with the host base): read/write,
    ///   device memory type, GPA `base_gpa + x` maps HPA `base_hpa + x`;
    /// - `passthrough_addresses` become identical device regions
    ///   ([`GuestAddrSpace::add_identical`], read/write, device memory type);
    /// - `emu_devices` become emulated MMIO regions, left unmapped so that
    ///   accesses trap ([`crate::FaultOutcome::Mmio`]).
    ///
    /// Every record is checked before any is added: its fields
    /// ([`DevicesConfig::check`]; [`AspaceError::DeviceConfig`]), then its
    /// guest window against the space's window, its regions and the earlier
    /// records ([`AspaceError::DevicePlacement`] naming the list, index and
    /// field). Those errors leave the space as it was. Only a refusal of
    /// the nested table itself (out of frames, a host address beyond the
    /// format's width) can stop the call part-way; the regions of the
    /// earlier records then stay (build a fresh space from the config to
    /// start over).
    pub fn add_devices(&mut self, devices: &DevicesConfig) -> AspaceResult<TlbFlush> {
        devices
            .check()
            .map_err(|(section, index, error)| AspaceError::DeviceConfig {
                section,
                index,
                error,
            })?;
        // `check` proved every base and length fits in a `usize`.
        let us = |v: u64| v as usize;
        // Every guest window, in the order the records are added.
        let d = devices;
        let windows = || {
            let pd = d.passthrough_devices.iter().enumerate().map(|(i, r)| {
                (
                    DeviceSection::PassthroughDevices,
                    i,
                    us(r.base_gpa),
                    us(r.length),
                )
            });
            let pa = d.passthrough_addresses.iter().enumerate().map(|(i, r)| {
                (
                    DeviceSection::PassthroughAddresses,
                    i,
                    us(r.base_gpa),
                    us(r.length),
                )
            });
            let emu = d
                .emu_devices
                .iter()
                .enumerate()
                .map(|(i, r)| (DeviceSection::EmuDevices, i, us(r.base_gpa), us(r.length)));
            pd.chain(pa).chain(emu)
        };
        // Placement first, all or nothing: against the space, then against
        // the earlier records (no allocation: the lists are walked again).
        for (k, (section, index, start, len)) in windows().enumerate() {
            let gpa = GuestPhysAddr::from_usize(start);
            self.check_free(start, len)
                .map_err(|e| self.device_error(section, index, gpa, e))?;
            let end = start + len;
            if let Some((_, _, other, _)) = windows()
                .take(k)
                .find(|&(_, _, s, l)| s < end && start < s + l)
            {
                return Err(AspaceError::DevicePlacement {
                    section,
                    index,
                    field: DeviceField::BaseGpa,
                    error: PlacementError::Overlap(GuestPhysAddr::from_usize(other)),
                });
            }
        }
        let rw_dev = MappingFlags::READ | MappingFlags::WRITE | MappingFlags::DEVICE;
        let mut flush = TlbFlush::none();
        for (index, d) in devices.passthrough_devices.iter().enumerate() {
            let gpa = GuestPhysAddr::from_usize(us(d.base_gpa));
            let hpa = HostPhysAddr::from_usize(us(d.base_hpa));
            let f = self
                .add_mmio(gpa, us(d.length), Some(hpa))
                .map_err(|e| self.device_error(DeviceSection::PassthroughDevices, index, gpa, e))?;
            flush.merge(f);
        }
        for (index, d) in devices.passthrough_addresses.iter().enumerate() {
            let gpa = GuestPhysAddr::from_usize(us(d.base_gpa));
            let f = self.add_identical(gpa, us(d.length), rw_dev).map_err(|e| {
                self.device_error(DeviceSection::PassthroughAddresses, index, gpa, e)
            })?;
            flush.merge(f);
        }
        for (index, d) in devices.emu_devices.iter().enumerate() {
            let gpa = GuestPhysAddr::from_usize(us(d.base_gpa));
            let f = self
                .add_mmio(gpa, us(d.length), None)
                .map_err(|e| self.device_error(DeviceSection::EmuDevices, index, gpa, e))?;
            flush.merge(f);
        }
        Ok(flush)
    }

    /// The section, index, field and reason of a device placement failure
    /// for the record at `gpa`.
    fn device_error(
        &self,
        section: DeviceSection,
        index: usize,
        gpa: GuestPhysAddr,
        e: AspaceError,
    ) -> AspaceError {
        let base = gpa.as_usize();
        let window = self.window;
        // Guest-side failures are the base's when the base itself is bad,
        // else the length's (the end is what went too far).
        let gpa_or_len = |at: usize| {
            if at == base {
                DeviceField::BaseGpa
            } else {
                DeviceField::Length
            }
        };
        // Host addresses are the base_hpa of a pass-through device, and the
        // guest base of an identity range.
        let host = if section == DeviceSection::PassthroughDevices {
            DeviceField::BaseHpa
        } else {
            DeviceField::BaseGpa
        };
        let (field, error) = match e {
            AspaceError::OutsideWindow { .. } => {
                let inside = base >= window.0 && base < window.1;
                let field = if inside {
                    DeviceField::Length
                } else {
                    DeviceField::BaseGpa
                };
                (field, PlacementError::OutsideWindow)
            }
            AspaceError::Overlap { existing, .. } => {
                (DeviceField::BaseGpa, PlacementError::Overlap(existing))
            }
            AspaceError::NoMemory | AspaceError::Table(NptError::NoMemory) => {
                (DeviceField::Length, PlacementError::NoMemory)
            }
            AspaceError::Table(t) => {
                let field = match t {
                    NptError::ZeroLength => DeviceField::Length,
                    NptError::GpaNotAligned { value, .. } => gpa_or_len(value),
                    NptError::GpaOutOfRange { gpa, .. } => gpa_or_len(gpa.as_usize()),
                    NptError::HpaNotAligned { .. } | NptError::HpaOutOfRange { .. } => host,
                    _ => DeviceField::BaseGpa,
                };
                (field, PlacementError::Table(t))
            }
            // `check` rules these out; named anyway.
            AspaceError::ZeroSize => (
                DeviceField::Length,
                PlacementError::Table(NptError::ZeroLength),
            ),
            AspaceError::NotAligned { value, align } => (
                gpa_or_len(value),
                PlacementError::Table(NptError::GpaNotAligned { value, align }),
            ),
            other => return other,
        };
        AspaceError::DevicePlacement {
            section,
            index,
            field,
            error,
        }
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

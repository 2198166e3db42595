//! Access permissions and memory types of a mapping.

/// Permissions and attributes of a mapping, shared with
/// `page_table_entry`/`page_table_multiarch` so that ArceOS-based
/// hypervisors pass theirs through unchanged.
///
/// In a nested table `READ`, `WRITE` and `EXECUTE` are the guest's rights on
/// the host frame. `USER` has no meaning at the second stage (every format
/// treats guest accesses uniformly) and is ignored by the formats that cannot
/// express it. `DEVICE` asks for device memory, `UNCACHED` for uncached
/// normal memory; see [`MemoryType::from_flags`].
pub use page_table_entry::MappingFlags;

/// The memory type (cacheability) a second-stage leaf gives the guest.
///
/// Each format maps these to its own encoding: the EPT memory-type field,
/// AMD's PAT/PCD/PWT bits, the Arm stage-2 `MemAttr` field, the RISC-V
/// Svpbmt `PBMT` field. Where a format has no exact match it uses the closest
/// stronger (less cached) type and documents it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MemoryType {
    /// Normal write-back cacheable memory: guest RAM.
    WriteBack,
    /// Normal uncached memory.
    Uncached,
    /// Write-combining: uncached, writes may be buffered and merged.
    WriteCombining,
    /// Write-through cacheable memory.
    WriteThrough,
    /// Write-protect (x86): reads cached, writes go to memory.
    WriteProtect,
    /// Device memory: no speculation, no merging, ordered accesses.
    Device,
}

impl MemoryType {
    /// The type implied by generic mapping flags: `DEVICE` gives
    /// [`MemoryType::Device`], `UNCACHED` gives [`MemoryType::Uncached`],
    /// anything else [`MemoryType::WriteBack`].
    #[inline]
    pub const fn from_flags(flags: MappingFlags) -> Self {
        if flags.contains(MappingFlags::DEVICE) {
            Self::Device
        } else if flags.contains(MappingFlags::UNCACHED) {
            Self::Uncached
        } else {
            Self::WriteBack
        }
    }

    /// The generic flags that carry this type back through
    /// `GenericPTE::flags`: `DEVICE` for device memory, `UNCACHED` for the
    /// uncached-like types, nothing for the cacheable ones.
    #[inline]
    pub const fn to_flags(self) -> MappingFlags {
        match self {
            Self::Device => MappingFlags::DEVICE,
            Self::Uncached | Self::WriteCombining => MappingFlags::UNCACHED,
            Self::WriteBack | Self::WriteThrough | Self::WriteProtect => MappingFlags::empty(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_pick_the_memory_type() {
        assert_eq!(
            MemoryType::from_flags(MappingFlags::READ),
            MemoryType::WriteBack
        );
        let dev = MappingFlags::READ | MappingFlags::DEVICE | MappingFlags::UNCACHED;
        assert_eq!(MemoryType::from_flags(dev), MemoryType::Device);
        assert_eq!(
            MemoryType::from_flags(MappingFlags::UNCACHED),
            MemoryType::Uncached
        );
    }

    #[test]
    fn to_flags_round_trips_the_generic_types() {
        for t in [
            MemoryType::WriteBack,
            MemoryType::Uncached,
            MemoryType::Device,
        ] {
            assert_eq!(MemoryType::from_flags(t.to_flags()), t);
        }
    }
}

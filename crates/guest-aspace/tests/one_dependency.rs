//! Everything a hypervisor names is reachable through `guest_aspace` alone.
//! This file uses no other crate of the workspace.

use guest_aspace::npt_entry::ept::Ept4;
use guest_aspace::npt_entry::stage2::Stage2Ipa40;
use guest_aspace::{
    Access, ConfigOptions, FaultOutcome, FrameAllocator, GuestAddrSpace, GuestPhysAddr,
    GuestPhysAddrRange, HandlerAllocator, HostFrameAllocator, MappingFlags, NptFormat, PageSize,
    TlbFlush,
};

/// `std` re-exports the host allocators at the root, as its docs say.
#[test]
fn std_feature_reexports_the_host_allocators() {
    let alloc = HostFrameAllocator::new();
    {
        let window = GuestPhysAddrRange::from_start_size(GuestPhysAddr::from(0), 1 << 32);
        let records = [
            [0x8000_0000, 0x20_0000, 0x7, 0],
            [0x900_0000, 0x1000, 0x3, 3],
        ];
        let (space, flush) = GuestAddrSpace::<Ept4, _>::from_config(
            &alloc,
            window,
            &records,
            ConfigOptions::default(),
        )
        .unwrap();
        let flush: TlbFlush = flush;
        flush.ignore();
        let rw = MappingFlags::READ | MappingFlags::WRITE;
        assert_eq!(
            space.regions().next().map(|r| r.flags),
            Some(rw | MappingFlags::DEVICE)
        );
        assert!(matches!(
            space.handle_fault(GuestPhysAddr::from(0x900_0000), Access::Read),
            Ok(FaultOutcome::Mmio { .. })
        ));
        assert_eq!(
            space
                .query(GuestPhysAddr::from(0x8000_0000))
                .unwrap()
                .page_size,
            PageSize::Size2M
        );
    }
    assert_eq!(alloc.live_frames(), 0);
    assert_eq!(guest_aspace::POISON, guest_aspace::npt_table::POISON);
    let _ = guest_aspace::FailingAllocator::new(&alloc);
}

/// `paging-handler` (default) re-exports the `PagingHandler` adapter.
#[test]
fn paging_handler_adapter_is_reexported() {
    fn takes<A: FrameAllocator>(_: &A) {}
    struct Nothing;
    impl guest_aspace::PagingHandler for Nothing {
        fn alloc_frames(_: usize, _: usize) -> Option<guest_aspace::memory_addr::PhysAddr> {
            None
        }
        fn dealloc_frames(_: guest_aspace::memory_addr::PhysAddr, _: usize) {}
        fn phys_to_virt(
            pa: guest_aspace::memory_addr::PhysAddr,
        ) -> guest_aspace::memory_addr::VirtAddr {
            guest_aspace::memory_addr::VirtAddr::from(pa.as_usize())
        }
    }
    let alloc = HandlerAllocator::<Nothing>::new();
    takes(&alloc);
    assert!(alloc.alloc_frame().is_none());
    assert_eq!(<Stage2Ipa40 as NptFormat>::GPA_BITS, 40);
}

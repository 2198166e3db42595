//! The one list of supported formats, for tests, benches and fuzz targets.

/// Expands `callback! { name: Type, ... }` once with every format this
/// crate defines, each named by a lowercase identifier:
///
/// | name | type |
/// |---|---|
/// | `ept4` | [`ept::Ept4`](crate::ept::Ept4) |
/// | `ept5` | [`ept::Ept5`](crate::ept::Ept5) |
/// | `npt4` | [`npt::Npt4`](crate::npt::Npt4) |
/// | `stage2_40` | [`stage2::Stage2<40>`](crate::stage2::Stage2) (3 levels, 2-frame concatenated root) |
/// | `stage2_48` | [`stage2::Stage2<48>`](crate::stage2::Stage2) (4 levels) |
/// | `stage2_32` | [`stage2::Stage2<32>`](crate::stage2::Stage2) (2 levels, 4-frame concatenated root) |
/// | `sv39x4` | [`gstage::Sv39x4`](crate::gstage::Sv39x4) |
/// | `sv48x4` | [`gstage::Sv48x4`](crate::gstage::Sv48x4) |
/// | `sv57x4` | [`gstage::Sv57x4`](crate::gstage::Sv57x4) |
///
/// The callback receives `name: Type,` pairs (a trailing comma after each),
/// so it matches them with `$($name:ident: $fmt:ty,)*`. The order is fixed:
/// fuzz inputs pick a format by its position, so a new format is appended
/// at the end to keep existing corpora meaning what they meant.
///
/// ```
/// use npt_entry::NptFormat;
///
/// macro_rules! names {
///     ($($name:ident: $fmt:ty,)*) => {
///         [$((stringify!($name), <$fmt as NptFormat>::LEVELS),)*]
///     };
/// }
/// let all = npt_entry::for_each_format!(names);
/// assert_eq!(all.len(), 9);
/// assert!(all.contains(&("stage2_32", 2)));
/// ```
#[macro_export]
macro_rules! for_each_format {
    ($callback:ident) => {
        $callback! {
            ept4: $crate::ept::Ept4,
            ept5: $crate::ept::Ept5,
            npt4: $crate::npt::Npt4,
            stage2_40: $crate::stage2::Stage2<40>,
            stage2_48: $crate::stage2::Stage2<48>,
            stage2_32: $crate::stage2::Stage2<32>,
            sv39x4: $crate::gstage::Sv39x4,
            sv48x4: $crate::gstage::Sv48x4,
            sv57x4: $crate::gstage::Sv57x4,
        }
    };
}

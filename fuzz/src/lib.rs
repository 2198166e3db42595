//! What the fuzz targets share: the format an input picks, and the dispatch
//! from that choice to a function generic over the format.
//!
//! The list of formats is `npt_entry::for_each_format!`, the same one the
//! tests use. `Fmt` derives `Arbitrary`, which picks a variant by its
//! position, so the list's fixed order keeps existing corpora meaning what
//! they meant.

use arbitrary::Arbitrary;
use npt_entry::NptFormat;

/// Work generic over the format, run by [`Fmt::dispatch`] with the type an
/// input picked (a generic function cannot be passed as a value).
pub trait FormatRun {
    /// What the work returns.
    type Output;
    /// Runs the work with format `F`.
    fn run<F: NptFormat>(self) -> Self::Output;
}

macro_rules! define_fmt {
    ($($name:ident: $fmt:ty,)*) => {
        /// A format, one variant per entry of `npt_entry::for_each_format!`,
        /// named as there.
        #[derive(Arbitrary, Debug, Clone, Copy, PartialEq, Eq)]
        #[allow(non_camel_case_types)]
        pub enum Fmt {
            $(
                #[doc = concat!("`", stringify!($fmt), "`")]
                $name,
            )*
        }

        impl Fmt {
            /// Every format, in list order.
            pub const ALL: &'static [Fmt] = &[$(Fmt::$name,)*];

            /// Runs `work` with the format this value names.
            pub fn dispatch<R: FormatRun>(self, work: R) -> R::Output {
                match self {
                    $(Fmt::$name => work.run::<$fmt>(),)*
                }
            }
        }
    };
}

npt_entry::for_each_format!(define_fmt);

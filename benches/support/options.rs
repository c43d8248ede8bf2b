//! The options every benchmark takes: `--quick` (small counts, for CI) and
//! `--markdown` (the report as a markdown table), or `YUKICOMM_BENCH_QUICK=1` and
//! `YUKICOMM_BENCH_MARKDOWN=1`. A bench with options of its own reads them through
//! [`Options::parse`]; unknown arguments (such as the `--bench` that `cargo bench`
//! passes) are ignored.

/// The options common to every benchmark.
#[derive(Clone, Copy, Debug)]
pub struct Options {
    /// Small counts: a smoke run of a few seconds.
    pub quick: bool,
    /// The report as a markdown table instead of aligned text.
    pub markdown: bool,
}

/// The value of the environment variable `name`, unless it is unset or empty.
pub fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

impl Options {
    /// Reads the environment and the arguments, ignoring every other argument.
    pub fn from_env() -> Options {
        match Self::parse(|_, _| Ok::<(), std::convert::Infallible>(())) {
            Ok(o) => o,
            Err(never) => match never {},
        }
    }

    /// Reads the environment and the arguments; `extra` sees every argument other than
    /// `--quick` and `--markdown`, in order, with the rest of the arguments to take its
    /// value from.
    ///
    /// # Errors
    ///
    /// The first error `extra` returns.
    pub fn parse<E>(
        mut extra: impl FnMut(&str, &mut dyn Iterator<Item = String>) -> Result<(), E>,
    ) -> Result<Options, E> {
        let env_on = |name: &str| env(name).is_some_and(|v| v != "0");
        let mut o = Options {
            quick: env_on("YUKICOMM_BENCH_QUICK"),
            markdown: env_on("YUKICOMM_BENCH_MARKDOWN"),
        };
        let mut args = std::env::args().skip(1);
        while let Some(a) = args.next() {
            match a.as_str() {
                "--quick" => o.quick = true,
                "--markdown" => o.markdown = true,
                _ => extra(&a, &mut args)?,
            }
        }
        Ok(o)
    }
}

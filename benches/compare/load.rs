//! Load levels: a closed loop with C jobs always in flight, or an open loop with R
//! jobs/s arriving evenly spaced whatever is in flight (latency then counts from
//! each job's planned arrival, so a client that falls behind shows it).

/// One load level.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Load {
    /// Closed loop: this many jobs in flight in total.
    Closed(usize),
    /// Open loop: this many jobs/s in total.
    Open(u64),
}

impl Load {
    /// `c64`, `r1000`: file names and `--service-time-levels`.
    pub fn slug(self) -> String {
        match self {
            Load::Closed(c) => format!("c{c}"),
            Load::Open(r) => format!("r{r}"),
        }
    }

    /// How the table names it: "64 in flight", "1,000/s".
    pub fn label(self) -> String {
        match self {
            Load::Closed(c) => format!("{c} in flight"),
            Load::Open(r) => format!("{}/s", thousands(r)),
        }
    }

    /// Parses a slug (`c64`, `r1000`).
    pub fn parse(word: &str) -> Result<Load, String> {
        let bad = || format!("{word:?} is not a level (c64: 64 in flight; r1000: 1,000 jobs/s)");
        let (kind, number) = word.trim().split_at_checked(1).ok_or_else(bad)?;
        let number: u64 = number.parse().map_err(|_| bad())?;
        if number == 0 {
            return Err(format!("{word:?}: a level must be at least 1"));
        }
        match kind {
            "c" => Ok(Load::Closed(number as usize)),
            "r" => Ok(Load::Open(number)),
            _ => Err(bad()),
        }
    }
}

/// 20000 → "20,000".
pub fn thousands(value: u64) -> String {
    let digits = value.to_string();
    let mut out = String::new();
    for (i, digit) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(digit);
    }
    out
}

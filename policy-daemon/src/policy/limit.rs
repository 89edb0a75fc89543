//! Rate limits (`action = "limit"`): the `rate`, `burst` and `per` of a rule, and the
//! token bucket parameters the kernel reads (`policy_common::LimitConfig`).

use std::fmt;

use policy_common::{LIMIT_MAX_COST, LIMIT_SHIFT, LimitConfig, limit_flags};

/// What a limit counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Unit {
    Packets,
    Bytes,
}

/// A rate: `tokens` packets or bytes per `period_ns`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Rate {
    pub tokens: u64,
    pub period_ns: u64,
    pub unit: Unit,
    /// As written, for messages and `check`.
    pub text: String,
}

/// Which packets share a bucket.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Per {
    /// One bucket for the whole rule.
    Rule,
    /// One bucket per source address, or per source network of these prefix lengths.
    Source { v4: u8, v6: u8 },
}

/// A rule's limit: packets within `rate` (with bursts of up to `burst` tokens) pass,
/// the rest are dropped.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Limit {
    pub rate: Rate,
    /// Tokens the bucket holds: the largest burst admitted at once.
    pub burst: u64,
    pub per: Per,
}

/// Largest burst accepted, in tokens.
const MAX_BURST: u64 = 1 << 40;
/// IPv6 prefix of `per = "source/N"` when only the IPv4 one is given: a site.
const DEFAULT_V6_PREFIX: u8 = 64;
/// The smallest Ethernet frame: a byte bucket smaller than this admits nothing.
const MIN_FRAME: u64 = 64;

impl Rate {
    /// Parses `"200/s"` (packets), `"20mbit/s"` (bits, kept as bytes), `"5MB/s"`
    /// (bytes); periods `s`, `m` (or `min`), `h`; multipliers k, M, G (1,000s) and
    /// Ki, Mi, Gi (1,024s).
    pub fn parse(text: &str) -> Result<Self, String> {
        let expected = "expected a rate such as \"200/s\" (packets), \"20mbit/s\" (bits) or \
                        \"5MB/s\" (bytes), per s, m or h";
        let (amount, period) = text
            .trim()
            .split_once('/')
            .ok_or_else(|| format!("rate {text:?} has no period: {expected}"))?;
        let period_ns: u64 = match period.trim() {
            "s" | "sec" | "second" => 1_000_000_000,
            "m" | "min" | "minute" => 60_000_000_000,
            "h" | "hour" => 3_600_000_000_000,
            other => return Err(format!("rate {text:?}: unknown period {other:?}: {expected}")),
        };
        let amount = amount.trim();
        let digits = amount.find(|c: char| !c.is_ascii_digit()).unwrap_or(amount.len());
        let (number, suffix) = amount.split_at(digits);
        let number: u64 = number.parse().map_err(|_| format!("rate {text:?}: {expected}"))?;
        let (multiplier, unit) = match suffix.trim() {
            "" | "p" | "pkt" | "pkts" | "packets" => (1, Unit::Packets),
            "k" | "kp" => (1_000, Unit::Packets),
            "M" | "Mp" => (1_000_000, Unit::Packets),
            unit => {
                let lower = unit.to_ascii_lowercase();
                let (prefix, bits) = if let Some(p) = lower.strip_suffix("bit") {
                    (p.to_string(), true)
                } else if let Some(p) = unit.strip_suffix('B') {
                    (p.to_ascii_lowercase(), false)
                } else {
                    return Err(format!("rate {text:?}: unknown unit {unit:?}: {expected}"));
                };
                let multiplier: u64 = match prefix.as_str() {
                    "" => 1,
                    "k" => 1_000,
                    "m" => 1_000_000,
                    "g" => 1_000_000_000,
                    "ki" => 1 << 10,
                    "mi" => 1 << 20,
                    "gi" => 1 << 30,
                    _ => return Err(format!("rate {text:?}: unknown unit {unit:?}: {expected}")),
                };
                (if bits { multiplier } else { multiplier * 8 }, Unit::Bytes)
            }
        };
        // Bytes are counted in bits here, then made bytes.
        let tokens =
            number.checked_mul(multiplier).ok_or_else(|| format!("rate {text:?} is too large"))?;
        let tokens = if unit == Unit::Bytes { tokens / 8 } else { tokens };
        if tokens == 0 {
            return Err(format!(
                "rate {text:?} is zero{}: a limit that admits nothing is a drop rule",
                if unit == Unit::Bytes { " bytes" } else { "" }
            ));
        }
        let rate = Self { tokens, period_ns, unit, text: text.trim().to_string() };
        let interval = rate.interval();
        // A byte's interval times the largest packet must fit the kernel's arithmetic.
        let max_interval = match unit {
            Unit::Packets => u64::MAX,
            Unit::Bytes => u64::MAX / u64::from(LIMIT_MAX_COST),
        };
        if interval > max_interval {
            return Err(format!("rate {text:?} is too small: byte rates start at 1B/s"));
        }
        if interval == 0 {
            return Err(format!("rate {text:?} is too large"));
        }
        Ok(rate)
    }

    /// ns per token, shifted left by `LIMIT_SHIFT`.
    pub fn interval(&self) -> u64 {
        let interval = (u128::from(self.period_ns) << LIMIT_SHIFT) / u128::from(self.tokens);
        u64::try_from(interval).unwrap_or(u64::MAX)
    }

    /// Tokens per second.
    pub fn per_second(&self) -> f64 {
        self.tokens as f64 * 1e9 / self.period_ns as f64
    }
}

impl Per {
    /// Parses `per`: `"source"`, `"source/24"` (IPv4 sources by /24, IPv6 by /64),
    /// `"source/24,56"` (both prefixes), or `"rule"`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let expected = "expected \"source\", \"source/24\" (IPv4 /24, IPv6 /64), \
                        \"source/24,56\" (IPv4 /24, IPv6 /56) or \"rule\"";
        match text.trim() {
            "rule" => return Ok(Self::Rule),
            "source" => return Ok(Self::Source { v4: 32, v6: 128 }),
            _ => {}
        }
        let Some(prefixes) = text.trim().strip_prefix("source/") else {
            return Err(format!("unknown per {text:?}: {expected}"));
        };
        let (v4, v6) = match prefixes.split_once(',') {
            Some((v4, v6)) => (v4, Some(v6.trim().trim_start_matches('/'))),
            None => (prefixes, None),
        };
        let prefix = |p: &str, max: u8, family: &str| match p.trim().parse::<u8>() {
            Ok(n) if (1..=max).contains(&n) => Ok(n),
            _ => Err(format!(
                "per {text:?}: the {family} prefix must be 1 to {max}, not {p:?}: {expected}"
            )),
        };
        let v4 = prefix(v4, 32, "IPv4")?;
        let v6 = match v6 {
            Some(v6) => prefix(v6, 128, "IPv6")?,
            None => DEFAULT_V6_PREFIX,
        };
        Ok(Self::Source { v4, v6 })
    }
}

impl fmt::Display for Per {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Rule => f.write_str("rule"),
            Self::Source { v4: 32, v6: 128 } => f.write_str("source"),
            Self::Source { v4, v6 } => write!(f, "source/{v4},{v6}"),
        }
    }
}

impl fmt::Display for Limit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let unit = match self.rate.unit {
            Unit::Packets => "packets",
            Unit::Bytes => "bytes",
        };
        write!(f, "{} burst {} {unit} per {}", self.rate.text, self.burst, self.per)
    }
}

impl Limit {
    /// Checks `burst` (tokens; one second of the rate when not given) and makes the limit.
    pub fn new(rate: Rate, burst: Option<i64>, per: Per) -> Result<Self, String> {
        let burst = match burst {
            None => (rate.per_second().ceil() as u64).max(match rate.unit {
                Unit::Packets => 1,
                Unit::Bytes => 1500,
            }),
            Some(b) if b < 1 => return Err(format!("burst must be at least 1, not {b}")),
            Some(b) if b as u64 > MAX_BURST => {
                return Err(format!("burst {b} is too large: at most {MAX_BURST}"));
            }
            Some(b) => b as u64,
        };
        if rate.unit == Unit::Bytes && burst < MIN_FRAME {
            return Err(format!(
                "burst {burst} bytes can never admit a packet: the smallest Ethernet frame is \
                 {MIN_FRAME} bytes; give the bucket room for the packets it should pass (1500 \
                 or more)"
            ));
        }
        Ok(Self { rate, burst, per })
    }

    /// The kernel's parameters of this limit, with buckets keyed by `id` (non-zero).
    pub fn kernel(&self, id: u32) -> LimitConfig {
        let interval = self.rate.interval();
        let tolerance = (u128::from(self.burst) * u128::from(interval)) >> LIMIT_SHIFT;
        let tolerance = u64::try_from(tolerance).unwrap_or(u64::MAX / 2).min(u64::MAX / 2);
        let mut flags = 0;
        if self.rate.unit == Unit::Bytes {
            flags |= limit_flags::BYTES;
        }
        let (v4_mask, v6_mask) = match self.per {
            Per::Rule => (0, [0; 4]),
            Per::Source { v4, v6 } => {
                flags |= limit_flags::PER_SOURCE;
                let v4_mask = (u32::MAX.checked_shl(32 - u32::from(v4)).unwrap_or(0)).to_be();
                let v6 = u128::MAX.checked_shl(128 - u32::from(v6)).unwrap_or(0).to_be_bytes();
                let word = |i: usize| {
                    u32::from_ne_bytes([v6[4 * i], v6[4 * i + 1], v6[4 * i + 2], v6[4 * i + 3]])
                };
                (v4_mask, [word(0), word(1), word(2), word(3)])
            }
        };
        LimitConfig { id: id.max(1), flags, interval, tolerance, v4_mask, v6_mask }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_parse_into_tokens_per_period() {
        let r = Rate::parse("200/s").expect("valid");
        assert_eq!((r.tokens, r.period_ns, r.unit), (200, 1_000_000_000, Unit::Packets));
        assert_eq!(r.interval(), 5_000_000 << LIMIT_SHIFT);
        let r = Rate::parse("20mbit/s").expect("valid");
        assert_eq!((r.tokens, r.unit), (2_500_000, Unit::Bytes));
        let r = Rate::parse("5MB/s").expect("valid");
        assert_eq!((r.tokens, r.unit), (5_000_000, Unit::Bytes));
        let r = Rate::parse("1KiB/s").expect("valid");
        assert_eq!(r.tokens, 1024);
        let r = Rate::parse("30/m").expect("valid");
        assert_eq!((r.tokens, r.period_ns), (30, 60_000_000_000));
        assert_eq!(Rate::parse("10k/s").expect("valid").tokens, 10_000);
        for bad in ["200", "200/d", "x/s", "0/s", "7bit/s", "5XB/s", "", "1B/h"] {
            assert!(Rate::parse(bad).is_err(), "{bad} parsed");
        }
    }

    #[test]
    fn per_parses_prefixes() {
        assert_eq!(Per::parse("rule"), Ok(Per::Rule));
        assert_eq!(Per::parse("source"), Ok(Per::Source { v4: 32, v6: 128 }));
        assert_eq!(Per::parse("source/24"), Ok(Per::Source { v4: 24, v6: 64 }));
        assert_eq!(Per::parse("source/24,56"), Ok(Per::Source { v4: 24, v6: 56 }));
        assert_eq!(Per::parse("source/16,/48"), Ok(Per::Source { v4: 16, v6: 48 }));
        for bad in ["src", "source/33", "source/0", "source/24,129", "source/", "rules"] {
            assert!(Per::parse(bad).is_err(), "{bad} parsed");
        }
    }

    #[test]
    fn kernel_parameters_mask_and_scale() {
        let limit = Limit::new(
            Rate::parse("100/s").expect("valid"),
            Some(10),
            Per::parse("source/24").expect("valid"),
        )
        .expect("valid");
        let k = limit.kernel(7);
        assert_eq!(k.id, 7);
        assert_eq!(k.flags, limit_flags::PER_SOURCE);
        assert_eq!(k.tolerance, 100_000_000, "10 packets at 10 ms");
        assert_eq!(k.v4_mask.to_ne_bytes(), [255, 255, 255, 0]);
        let bytes: Vec<u8> = k.v6_mask.iter().flat_map(|w| w.to_ne_bytes()).collect();
        assert_eq!(&bytes[..8], &[255; 8]);
        assert_eq!(&bytes[8..], &[0; 8]);
        let fast =
            Limit::new(Rate::parse("1M/s").expect("valid"), Some(10), Per::Rule).expect("valid");
        let k = fast.kernel(0);
        assert_eq!((k.id, k.flags, k.v4_mask, k.tolerance), (1, 0, 0, 10_000));
        // Default burst: one second of the rate.
        let limit =
            Limit::new(Rate::parse("200/s").expect("valid"), None, Per::Rule).expect("valid");
        assert_eq!(limit.burst, 200);
        assert!(Limit::new(Rate::parse("1MB/s").expect("valid"), Some(10), Per::Rule).is_err());
        assert!(Limit::new(Rate::parse("1/s").expect("valid"), Some(0), Per::Rule).is_err());
    }
}

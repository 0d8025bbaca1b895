//! `<stage>.hgrm`: HdrHistogram's percentile-distribution text, byte for byte what
//! Java's `AbstractHistogram.outputPercentileDistribution(out, 5, 1.0)` prints, so
//! existing plotters (HdrHistogram's `plotFiles.html`, HistogramLogAnalyzer, …) read it.
//!
//! The format, from the Java source:
//!
//! ```text
//! "%12s %14s %10s %14s\n\n"           Value, Percentile, TotalCount, 1/(1-Percentile)
//! "%12.{d}f %2.12f %10d %14.2f\n"     one row per percentile step below 100%
//! "%12.{d}f %2.12f %10d\n"            the last row (100%): no 1/(1-p) column at all
//! "#[Mean    = %12.{d}f, StdDeviation   = %12.{d}f]\n"
//! "#[Max     = %12.{d}f, Total count    = %12d]\n"
//! "#[Buckets = %12d, SubBuckets     = %12d]\n"
//! ```
//!
//! where `{d}` is the histogram's significant digits (3 here) and values are divided
//! by the unit scaling ratio (1.0: the values stay in µs).
//!
//! Two details make a faithful copy more than a `format!` call:
//!
//! - **The steps.** Java's `PercentileIterator` walks percentile levels *in percent*
//!   (0, 10, 20 … 50, 55 … 75, 77.5 …), which are exact binary fractions, and compares
//!   them with `100.0 * countSoFar / total`. The Rust crate's `iter_quantiles` walks
//!   the same levels as fractions (0.1, 0.2, …), which are not exact: after three
//!   steps its level is 0.30000000000000004, so for the values 1..=10 it reports the
//!   30% row at value 4 where Java reports 3. [`percentile_steps`] therefore re-does
//!   Java's iteration in percent over the recorded buckets.
//! - **The numbers.** Java's `%.Nf` rounds the *shortest* decimal representation of
//!   the double half-up (`1.005` → `"1.01"`, `2.0625` → `"2.063"`), where Rust's
//!   `{:.N}` rounds the exact binary value half-to-even. [`java_fixed`] does Java's.
//!   The mean is also summed Java's way (`Σ median·count / total`, one division).

use std::fmt::Write;

use hdrhistogram::Histogram;

/// Steps per half distance to 100%, as every HdrHistogram tool prints by default.
pub const TICKS_PER_HALF_DISTANCE: u32 = 5;

/// One row of the distribution: the iteration stopped at `value` on its way to
/// `percentile`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PercentileStep {
    /// Highest value equivalent to the bucket the step stopped in (µs).
    pub value: u64,
    /// The percentile level iterated to, in percent (0.0 ..= 100.0).
    pub percentile: f64,
    /// Samples at or below `value`.
    pub total_count: u64,
}

/// Java's `PercentileIterator`, step for step (see the module comment for why not
/// `iter_quantiles`). The last step is always at 100% and the maximum; an empty
/// histogram has no steps.
pub fn percentile_steps(
    histogram: &Histogram<u64>,
    ticks_per_half_distance: u32,
) -> Vec<PercentileStep> {
    let total = histogram.len();
    let mut steps = Vec::new();
    if total == 0 {
        return steps;
    }
    let mut recorded = histogram
        .iter_recorded()
        .map(|v| (v.value_iterated_to(), v.count_at_value()));
    // The bucket the iteration stands on, and the count up to and including it.
    let mut current: Option<u64> = None;
    let mut total_to_current = 0_u64;
    let mut level = 0.0_f64;
    let mut reached_last_recorded_value = false;
    loop {
        // hasNext(): once every sample is behind us, one more step, to exactly 100%.
        if total_to_current >= total {
            if reached_last_recorded_value {
                break;
            }
            level = 100.0;
            reached_last_recorded_value = true;
        }
        // next(): stay on the current bucket while it satisfies the level, else move on.
        loop {
            if let Some(value) = current {
                let current_percentile = (100.0 * total_to_current as f64) / total as f64;
                if current_percentile >= level {
                    steps.push(PercentileStep {
                        value,
                        percentile: level,
                        total_count: total_to_current,
                    });
                    break;
                }
            }
            match recorded.next() {
                Some((value, count)) => {
                    current = Some(value);
                    total_to_current += count;
                }
                // Unreachable for a consistent histogram: the last bucket reaches 100%.
                None => return steps,
            }
        }
        if level < 100.0 {
            level += 100.0 / reporting_ticks(level, ticks_per_half_distance);
        }
    }
    steps
}

/// Java's `incrementIterationLevel`: the number of ticks the whole 0–100% range
/// would have at the current level's scale (it doubles at 50%, 75%, 87.5% …).
fn reporting_ticks(level_percent: f64, ticks_per_half_distance: u32) -> f64 {
    // (long) (Math.log(100.0 / (100.0 - level)) / Math.log(2)): truncation toward zero.
    let halvings = ((100.0 / (100.0 - level_percent)).ln() / 2_f64.ln()) as i64;
    // (long) Math.pow(2, halvings + 1), saturating like Java's double-to-long cast.
    let scale = 2_f64.powi((halvings + 1).clamp(0, 62) as i32) as i64;
    (i64::from(ticks_per_half_distance).saturating_mul(scale)) as f64
}

/// Java's mean: Σ median-equivalent value × count, divided once by the total.
fn java_mean(histogram: &Histogram<u64>) -> f64 {
    if histogram.is_empty() {
        return 0.0;
    }
    let total_value: f64 = histogram
        .iter_recorded()
        .map(|v| {
            histogram.median_equivalent(v.value_iterated_to()) as f64 * v.count_at_value() as f64
        })
        .sum();
    total_value / histogram.len() as f64
}

/// Java's standard deviation, around [`java_mean`].
fn java_std_deviation(histogram: &Histogram<u64>) -> f64 {
    if histogram.is_empty() {
        return 0.0;
    }
    let mean = java_mean(histogram);
    let total: f64 = histogram
        .iter_recorded()
        .map(|v| {
            let deviation = histogram.median_equivalent(v.value_iterated_to()) as f64 - mean;
            deviation * deviation * v.count_since_last_iteration() as f64
        })
        .sum();
    (total / histogram.len() as f64).sqrt()
}

/// Java's `subBucketCount`: the power of two that holds `2 × 10^digits` values at
/// unit resolution (2048 for 3 digits). The Rust crate keeps it private.
fn sub_bucket_count(histogram: &Histogram<u64>) -> u64 {
    let largest_single_unit = 2 * 10_u64.pow(u32::from(histogram.sigfig()));
    largest_single_unit.next_power_of_two()
}

/// The `.hgrm` text for `histogram`, values divided by `unit_scale` (1.0: as recorded).
pub fn percentile_distribution(histogram: &Histogram<u64>, unit_scale: f64) -> String {
    let digits = usize::from(histogram.sigfig());
    let mut out = String::new();
    let _ = write!(
        out,
        "{:>12} {:>14} {:>10} {:>14}\n\n",
        "Value", "Percentile", "TotalCount", "1/(1-Percentile)"
    );
    for step in percentile_steps(histogram, TICKS_PER_HALF_DISTANCE) {
        let value = java_fixed(step.value as f64 / unit_scale, digits);
        let fraction = java_fixed(step.percentile / 100.0, 12);
        if step.percentile != 100.0 {
            let inverse = java_fixed(1.0 / (1.0 - step.percentile / 100.0), 2);
            let _ = writeln!(
                out,
                "{value:>12} {fraction:>2} {:>10} {inverse:>14}",
                step.total_count
            );
        } else {
            let _ = writeln!(out, "{value:>12} {fraction:>2} {:>10}", step.total_count);
        }
    }
    let mean = java_fixed(java_mean(histogram) / unit_scale, digits);
    let std_deviation = java_fixed(java_std_deviation(histogram) / unit_scale, digits);
    let _ = writeln!(
        out,
        "#[Mean    = {mean:>12}, StdDeviation   = {std_deviation:>12}]"
    );
    let max = java_fixed(histogram.max() as f64 / unit_scale, digits);
    let _ = writeln!(
        out,
        "#[Max     = {max:>12}, Total count    = {:>12}]",
        histogram.len()
    );
    let _ = writeln!(
        out,
        "#[Buckets = {:>12}, SubBuckets     = {:>12}]",
        histogram.buckets(),
        sub_bucket_count(histogram)
    );
    out
}

/// `String.format(Locale.US, "%.{decimals}f", x)` as Java does it: take the shortest
/// decimal digits that read back as `x`, then round them half-up.
pub fn java_fixed(x: f64, decimals: usize) -> String {
    if x.is_nan() {
        return "NaN".into();
    }
    if x.is_infinite() {
        return if x > 0.0 { "Infinity" } else { "-Infinity" }.into();
    }
    let negative = x.is_sign_negative() && x != 0.0;
    // "{:e}" prints the shortest round-trip digits: "1.005e0", "5e-4".
    let scientific = format!("{:e}", x.abs());
    let (mantissa, exponent) = scientific
        .split_once('e')
        .expect("{:e} always has an exponent");
    let exponent: i64 = exponent.parse().expect("{:e} exponent is an integer");
    let mut digits: Vec<u8> = mantissa
        .bytes()
        .filter(u8::is_ascii_digit)
        .map(|b| b - b'0')
        .collect();
    // The value is 0.d1d2d3… × 10^point.
    let mut point = exponent + 1;
    if digits == [0] {
        point = 1;
    }
    // Keep the digits up to `decimals` places after the point; round on the first dropped one.
    let keep = point + decimals as i64;
    if keep < 0 {
        digits.clear();
    } else if (keep as usize) < digits.len() {
        let keep = keep as usize;
        let round_up = digits[keep] >= 5;
        digits.truncate(keep);
        if round_up {
            let mut i = keep;
            loop {
                if i == 0 {
                    digits.insert(0, 1);
                    point += 1;
                    break;
                }
                i -= 1;
                if digits[i] == 9 {
                    digits[i] = 0;
                } else {
                    digits[i] += 1;
                    break;
                }
            }
        }
    }
    let digit_at = |i: i64| -> char {
        if i >= 0 && (i as usize) < digits.len() {
            char::from(b'0' + digits[i as usize])
        } else {
            '0'
        }
    };
    let mut out = String::new();
    if negative {
        out.push('-');
    }
    if point <= 0 {
        out.push('0');
    } else {
        (0..point).for_each(|i| out.push(digit_at(i)));
    }
    if decimals > 0 {
        out.push('.');
        (point..point + decimals as i64).for_each(|i| out.push(digit_at(i)));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn histogram_of(values: impl IntoIterator<Item = u64>) -> Histogram<u64> {
        let mut h = super::super::new_histogram();
        for v in values {
            h.record(v).unwrap();
        }
        h
    }

    #[test]
    fn java_number_formatting_rounds_the_shortest_digits_half_up() {
        // Each pair printed by OpenJDK 17's String.format(Locale.US, …).
        assert_eq!(java_fixed(0.125, 2), "0.13");
        assert_eq!(java_fixed(1.005, 2), "1.01");
        assert_eq!(java_fixed(2.0625, 3), "2.063");
        assert_eq!(java_fixed(2.0625, 2), "2.06");
        assert_eq!(java_fixed(0.0005, 3), "0.001");
        assert_eq!(java_fixed(0.0005, 2), "0.00");
        assert_eq!(java_fixed(2.675, 0), "3");
        assert_eq!(java_fixed(9.9995, 3), "10.000");
        assert_eq!(java_fixed(0.9999995, 12), "0.999999500000");
        assert_eq!(java_fixed(0.1 + 0.2, 12), "0.300000000000");
        assert_eq!(java_fixed(1.0 / (1.0 - 0.55), 2), "2.22");
        assert_eq!(java_fixed(0.0, 3), "0.000");
        assert_eq!(java_fixed(1234567.0, 3), "1234567.000");
    }

    #[test]
    fn steps_follow_javas_percent_levels_not_rust_quantile_levels() {
        let h = histogram_of(1..=10);
        let steps = percentile_steps(&h, 5);
        // Java: 30% is reached at value 3 (100*3/10 = 30.0 >= 30.0).
        let thirty = steps.iter().find(|s| s.percentile == 30.0).unwrap();
        assert_eq!((thirty.value, thirty.total_count), (3, 3));
        // hdrhistogram's iter_quantiles gets there one value late (0.3 < 0.1+0.1+0.1).
        let rust = h
            .iter_quantiles(5)
            .find(|v| (v.quantile_iterated_to() - 0.3).abs() < 1e-9)
            .unwrap();
        assert_eq!(rust.value_iterated_to(), 4);
        // The walk ends with exactly one 100% step, at the maximum.
        let last = steps.last().unwrap();
        assert_eq!(
            (last.value, last.percentile, last.total_count),
            (10, 100.0, 10)
        );
        assert_eq!(steps.iter().filter(|s| s.percentile == 100.0).count(), 1);
    }

    /// Golden text for the values 1..=10, one sample each, derived by hand from the
    /// Java rules quoted in the module comment, then checked against a line-by-line
    /// transcription of Java's `PercentileIterator` and `outputPercentileDistribution`
    /// run on OpenJDK 17 (same text):
    ///
    /// - levels (percent), 5 ticks per half distance: 0 to 50 by 10; 55 to 75 by 5;
    ///   77.5 to 87.5 by 2.5; 88.75, 90, 91.25 … by 1.25.
    /// - a level is reported at the first value whose cumulative percentage
    ///   (10 × value) is >= the level, and the iteration stays on that value while
    ///   the next levels are satisfied too: 0 and 10 both at value 1; 55 and 60 at 6;
    ///   77.5 and 80 at 8; 82.5 … 90 at 9; 91.25 moves on to the last value, 10.
    /// - standing on the last value (100%), Java skips the remaining levels and prints
    ///   one row at exactly 100%, without the 1/(1-p) column.
    /// - 1/(1-p) at "%.2f": 1/0.45 = 2.22…, 1/0.0875 = 11.428… → "11.43".
    /// - mean 5.5, population standard deviation √8.25 = 2.8723 → "2.872"; max 10;
    ///   17 buckets of 2048 sub-buckets cover 1..1e8 (100 s in µs) at 3 significant digits.
    const GOLDEN_1_TO_10: &str = "       Value     Percentile TotalCount 1/(1-Percentile)

       1.000 0.000000000000          1           1.00
       1.000 0.100000000000          1           1.11
       2.000 0.200000000000          2           1.25
       3.000 0.300000000000          3           1.43
       4.000 0.400000000000          4           1.67
       5.000 0.500000000000          5           2.00
       6.000 0.550000000000          6           2.22
       6.000 0.600000000000          6           2.50
       7.000 0.650000000000          7           2.86
       7.000 0.700000000000          7           3.33
       8.000 0.750000000000          8           4.00
       8.000 0.775000000000          8           4.44
       8.000 0.800000000000          8           5.00
       9.000 0.825000000000          9           5.71
       9.000 0.850000000000          9           6.67
       9.000 0.875000000000          9           8.00
       9.000 0.887500000000          9           8.89
       9.000 0.900000000000          9          10.00
      10.000 0.912500000000         10          11.43
      10.000 1.000000000000         10
#[Mean    =        5.500, StdDeviation   =        2.872]
#[Max     =       10.000, Total count    =           10]
#[Buckets =           17, SubBuckets     =         2048]
";

    #[test]
    fn hgrm_text_matches_the_java_format_exactly() {
        let h = histogram_of(1..=10);
        assert_eq!(percentile_distribution(&h, 1.0), GOLDEN_1_TO_10);
    }

    #[test]
    fn empty_histogram_prints_header_and_footer_only() {
        let h = histogram_of([]);
        assert_eq!(
            percentile_distribution(&h, 1.0),
            "       Value     Percentile TotalCount 1/(1-Percentile)\n\n\
             #[Mean    =        0.000, StdDeviation   =        0.000]\n\
             #[Max     =        0.000, Total count    =            0]\n\
             #[Buckets =           17, SubBuckets     =         2048]\n"
        );
    }

    #[test]
    fn uniform_values_give_expected_percentiles_and_rows() {
        let h = histogram_of(1..=10_000);
        // 3 significant digits: values above 2048 share buckets, reported at their top.
        assert_eq!(h.value_at_quantile(0.5), 5_003);
        assert_eq!(h.value_at_quantile(0.99), 9_903);
        assert_eq!(h.max(), 10_007);
        let text = percentile_distribution(&h, 1.0);
        let rows: Vec<&str> = text
            .lines()
            .skip(2)
            .take_while(|l| !l.starts_with('#'))
            .collect();
        // 0% row at the lowest value; last row is the max at 100% with no 1/(1-p).
        assert_eq!(
            rows[0],
            "       1.000 0.000000000000          1           1.00"
        );
        assert_eq!(
            rows.last().unwrap(),
            &"   10007.000 1.000000000000      10000"
        );
        assert!(text.contains("#[Max     =    10007.000, Total count    =        10000]"));
        // Every row but the last has four columns, and the percentiles never go down.
        let mut previous = -1.0;
        for row in &rows[..rows.len() - 1] {
            let columns: Vec<&str> = row.split_whitespace().collect();
            assert_eq!(columns.len(), 4, "{row}");
            let p: f64 = columns[1].parse().unwrap();
            assert!(p >= previous);
            previous = p;
        }
    }
}

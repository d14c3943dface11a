//! Percentile spectra as SVG: latency (ms) against percentile on the
//! usual HdrHistogram axis, `1 / (1 - percentile)` on a log scale, so 90%,
//! 99%, 99.9% … are equally spaced. Input is `.hgrm` text (what
//! [`crate::stats::hgrm`] writes and HdrHistogram's own tools read), so runs
//! of different days and machines can be compared.
//!
//! plotters draws with its SVG backend only, without its `ttf` feature: text
//! is written as SVG `<text>` for the viewer to render, so nothing here
//! reads system fonts. Each input becomes one line series, labelled with
//! its name, and a legend.

use std::fmt::Write as _;
use std::path::Path;

use plotters::prelude::*;

/// The spectrum is drawn up to the nines the data reach (a run of 10 000
/// requests reaches 99.99%), at least [`NINES_MIN`] and at most
/// [`NINES_MAX`]; the 100% point (the maximum) is drawn at the right edge.
pub const NINES_MAX: i32 = 6;
pub const NINES_MIN: i32 = 2;
/// Inputs one plot accepts: one colour each, still readable.
pub const SERIES_MAX: usize = 12;

const COLORS: [RGBColor; SERIES_MAX] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(255, 127, 14),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
    RGBColor(0, 0, 0),
    RGBColor(0, 0, 128),
];

/// One run's spectrum: (percentile in `[0, 1]`, latency in ms), by
/// increasing percentile.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    pub label: String,
    pub points: Vec<(f64, f64)>,
}

/// Reads the data lines of `.hgrm` text (`Value Percentile TotalCount
/// 1/(1-Percentile)`, values in ms).
pub fn parse_hgrm(label: &str, text: &str) -> Result<Series, String> {
    let mut points = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.is_empty() || line.trim_start().starts_with('#') || fields[0] == "Value" {
            continue;
        }
        let num = |f: &str| f.parse::<f64>().map_err(|_| format!("{label}: line {}: {f:?} is not a number", i + 1));
        if fields.len() < 3 {
            return Err(format!("{label}: line {} is not Value Percentile TotalCount", i + 1));
        }
        let (value_ms, q) = (num(fields[0])?, num(fields[1])?);
        if !(0.0..=1.0).contains(&q) || value_ms < 0.0 || points.last().is_some_and(|(p, _)| q < *p) {
            return Err(format!("{label}: line {}: percentile {q} out of order or range", i + 1));
        }
        points.push((q, value_ms));
    }
    if points.is_empty() {
        return Err(format!("{label}: no percentile lines (an empty histogram?)"));
    }
    Ok(Series { label: label.to_string(), points })
}

/// Reads a `.hgrm` file; its label is the file name without `.hgrm`.
pub fn read_hgrm(path: &Path) -> Result<Series, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let label = path.file_name().map_or_else(|| path.display().to_string(), |n| n.to_string_lossy().to_string());
    parse_hgrm(label.strip_suffix(".hgrm").unwrap_or(&label), &text)
}

/// The x coordinate of percentile `q`: `1 / (1 - q)`, the maximum at `x_max`.
fn x_of(q: f64, x_max: f64) -> f64 {
    if q >= 1.0 {
        x_max
    } else {
        (1.0 / (1.0 - q)).min(x_max)
    }
}

/// The right edge: the next power of ten above the highest percentile
/// below 100% in the data.
fn x_max_of(series: &[Series]) -> f64 {
    let highest = series.iter().flat_map(|s| s.points.iter()).filter(|(q, _)| *q < 1.0).map(|(q, _)| 1.0 / (1.0 - q));
    let nines = highest.fold(1.0f64, f64::max).log10().ceil() as i32;
    10f64.powi(nines.clamp(NINES_MIN, NINES_MAX))
}

fn percent_label(x: &f64) -> String {
    let p = 100.0 * (1.0 - 1.0 / x);
    let mut s = String::new();
    let digits = (x.log10().round() as i32 - 2).max(0) as usize;
    let _ = write!(s, "{p:.digits$}%");
    s
}

/// The SVG text of a plot of `series` (1 to [`SERIES_MAX`] of them).
pub fn render_svg(series: &[Series], title: &str) -> Result<String, String> {
    if series.is_empty() || series.len() > SERIES_MAX {
        return Err(format!("a plot takes 1 to {SERIES_MAX} series, not {}", series.len()));
    }
    let y_max = series.iter().flat_map(|s| s.points.iter().map(|p| p.1)).fold(0.0f64, f64::max).max(0.001) * 1.05;
    let x_max = x_max_of(series);
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (960, 600)).into_drawing_area();
        let err = |e: DrawingAreaErrorKind<_>| format!("drawing the plot: {e}");
        root.fill(&WHITE).map_err(err)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 22))
            .margin(16)
            .margin_right(48)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d((1.0..x_max).log_scale(), 0.0..y_max)
            .map_err(err)?;
        chart
            .configure_mesh()
            .x_desc("percentile")
            .y_desc("latency (ms)")
            .x_label_formatter(&percent_label)
            .label_style(("sans-serif", 14))
            .axis_desc_style(("sans-serif", 16))
            .draw()
            .map_err(err)?;
        for (s, color) in series.iter().zip(COLORS) {
            let points = s.points.iter().map(|(q, v)| (x_of(*q, x_max), *v));
            chart
                .draw_series(LineSeries::new(points, color.stroke_width(2)))
                .map_err(err)?
                .label(s.label.clone())
                .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], color.stroke_width(2)));
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .label_font(("sans-serif", 14))
            .draw()
            .map_err(err)?;
        root.present().map_err(err)?;
    }
    Ok(svg)
}

/// Writes the plot of `series` to `path`.
pub fn write_svg(path: &Path, series: &[Series], title: &str) -> Result<(), String> {
    let svg = render_svg(series, title)?;
    std::fs::write(path, svg).map_err(|e| format!("{}: {e}", path.display()))
}

/// The stroke colour of series `i` as SVG writes it (for tests and tools
/// that look for a series in the file).
pub fn color_hex(i: usize) -> String {
    let RGBColor(r, g, b) = COLORS[i];
    format!("#{r:02X}{g:02X}{b:02X}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::hgrm;

    fn spectrum(label: &str, scale: u64) -> Series {
        let mut h = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).unwrap();
        for i in 1..=10_000u64 {
            h.record(i * scale).unwrap();
        }
        parse_hgrm(label, &hgrm(&h)).unwrap()
    }

    #[test]
    fn hgrm_text_parses_into_an_ordered_spectrum() {
        let s = spectrum("a", 1000);
        assert_eq!(s.points.first().unwrap().0, 0.0);
        assert_eq!(s.points.last().unwrap().0, 1.0);
        let max = s.points.last().unwrap().1;
        assert!((9.99..=10.01).contains(&max), "{max}");
        assert!(s.points.windows(2).all(|w| w[0].0 <= w[1].0 && w[0].1 <= w[1].1));
        assert!(parse_hgrm("x", "       Value     Percentile TotalCount 1/(1-Percentile)\n\n").is_err());
        assert!(parse_hgrm("x", "1.0 0.9 1\n1.0 0.5 2\n").is_err(), "out of order");
        assert!(parse_hgrm("x", "1.0 zero 1\n").is_err());
    }

    #[test]
    fn the_svg_has_one_series_per_input() {
        let inputs = [spectrum("kvd-set", 1000), spectrum("redis-set", 700), spectrum("memcached-set", 500)];
        let svg = render_svg(&inputs, "SET latency").unwrap();
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        // plotters writes each <text> element's content on the next line.
        let lines: Vec<&str> = svg.lines().collect();
        let texts: Vec<&str> = lines.windows(2).filter(|w| w[0].starts_with("<text")).map(|w| w[1].trim()).collect();
        for (i, s) in inputs.iter().enumerate() {
            let stroke = format!("stroke=\"{}\"", color_hex(i));
            // The series line and its legend sample.
            let lines = svg.lines().filter(|l| l.contains("<polyline") && l.contains(&stroke)).count();
            assert_eq!(lines, 2, "series {i}: {svg}");
            assert!(texts.contains(&s.label.as_str()), "legend names {}: {texts:?}", s.label);
        }
        let unused = format!("stroke=\"{}\"", color_hex(inputs.len()));
        assert!(!svg.contains(&unused));
        // 10 000 samples: the axis ends at 99.99%.
        assert!(!texts.contains(&"99.999%"), "{texts:?}");
        for tick in ["90%", "99%", "99.9%", "99.99%"] {
            assert!(texts.contains(&tick), "percentile tick {tick}: {texts:?}");
        }
        assert!(render_svg(&[], "x").is_err());
    }

    #[test]
    fn files_are_read_and_written() {
        let dir = tempfile::tempdir().unwrap();
        let mut h = hdrhistogram::Histogram::<u64>::new(3).unwrap();
        h.record(1_000_000).unwrap();
        let path = dir.path().join("run-get.hgrm");
        std::fs::write(&path, hgrm(&h)).unwrap();
        let s = read_hgrm(&path).unwrap();
        assert_eq!(s.label, "run-get");
        let out = dir.path().join("p.svg");
        write_svg(&out, &[s], "t").unwrap();
        assert!(std::fs::read_to_string(out).unwrap().contains("run-get"));
    }
}

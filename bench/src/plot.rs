//! The lateness histogram as a PNG: bars on a linear millisecond axis up to a little past
//! the 99.9th percentile (the rest counted in the title), the median and the 99th
//! percentile marked. Drawn into a pixel buffer with a 5×7 bitmap font, so no font
//! files or plotting library are needed.

use std::fs::File;
use std::io::BufWriter;
use std::path::Path;

use anyhow::Context;

const WIDTH: usize = 960;
const HEIGHT: usize = 540;
const LEFT: usize = 90;
const RIGHT: usize = 30;
const TOP: usize = 60;
const BOTTOM: usize = 70;
const BINS: usize = 120;
/// Pixels per font dot.
const SCALE: usize = 2;

type Rgb = [u8; 3];
const WHITE: Rgb = [255, 255, 255];
const BLACK: Rgb = [20, 20, 20];
const GREY: Rgb = [215, 215, 215];
const BAR: Rgb = [70, 110, 190];
const MEDIAN: Rgb = [30, 150, 60];
const P99: Rgb = [200, 40, 40];

/// Writes the histogram of `samples_ms` to `path`.
pub fn lateness_histogram(samples_ms: &[f64], path: &Path) -> anyhow::Result<()> {
    let mut canvas = Canvas::new();
    let mut sorted: Vec<f64> = samples_ms
        .iter()
        .copied()
        .filter(|v| v.is_finite())
        .collect();
    sorted.sort_by(f64::total_cmp);
    let quantile = |q: f64| {
        sorted
            .get(((sorted.len() as f64 - 1.0) * q).round() as usize)
            .copied()
            .unwrap_or(0.0)
    };
    let (p50, p99, max) = (
        quantile(0.5),
        quantile(0.99),
        sorted.last().copied().unwrap_or(0.0),
    );
    let x_max = nice_ceiling((quantile(0.999) * 1.2).max(1.0));
    let mut counts = [0_u64; BINS];
    let mut beyond = 0;
    for value in &sorted {
        if *value > x_max {
            beyond += 1;
        } else {
            counts[((value / x_max * BINS as f64) as usize).min(BINS - 1)] += 1;
        }
    }
    let y_max = nice_ceiling(counts.iter().copied().max().unwrap_or(1).max(1) as f64);
    canvas.axes(x_max, y_max);
    let plot_w = WIDTH - LEFT - RIGHT;
    let plot_h = HEIGHT - TOP - BOTTOM;
    for (bin, count) in counts.iter().enumerate() {
        let x0 = LEFT + bin * plot_w / BINS;
        let x1 = LEFT + (bin + 1) * plot_w / BINS;
        let h = (*count as f64 / y_max * plot_h as f64).round() as usize;
        canvas.fill(
            x0 + 1,
            HEIGHT - BOTTOM - h,
            x1.saturating_sub(x0 + 1).max(1),
            h,
            BAR,
        );
    }
    for (value, color, name) in [(p50, MEDIAN, "P50"), (p99, P99, "P99")] {
        if value <= x_max {
            let x = LEFT + (value / x_max * plot_w as f64) as usize;
            canvas.fill(x, TOP, 2, plot_h, color);
            canvas.text(x + 4, TOP + 4, &format!("{name} {}", short(value)), color);
        }
    }
    canvas.text(
        LEFT,
        8,
        "LATENESS = CANCELLED_AT - EXPIRES_AT (DATABASE TIME)",
        BLACK,
    );
    let beyond = if beyond > 0 {
        format!(", {beyond} ABOVE {}", short(x_max))
    } else {
        String::new()
    };
    let figures = format!(
        "N={}  P50={}  P99={}  MAX={} MS{beyond}",
        sorted.len(),
        short(p50),
        short(p99),
        short(max)
    );
    canvas.text(LEFT, 30, &figures, BLACK);
    canvas.text(LEFT + plot_w / 2 - 60, HEIGHT - 25, "LATENESS (MS)", BLACK);
    canvas.text(8, TOP - 24, "ORDERS", BLACK);
    canvas.write(path)
}

/// 1, 2 or 5 times a power of ten, at least `value`.
fn nice_ceiling(value: f64) -> f64 {
    let power = 10_f64.powf(value.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * power)
        .find(|v| *v >= value)
        .unwrap_or(10.0 * power)
}

/// A number as a short label: `3.4`, `25`, `1200`.
fn short(value: f64) -> String {
    if value < 10.0 {
        format!("{value:.1}")
    } else {
        format!("{value:.0}")
    }
}

struct Canvas {
    pixels: Vec<u8>,
}

impl Canvas {
    fn new() -> Self {
        Self {
            pixels: WHITE.repeat(WIDTH * HEIGHT),
        }
    }

    fn fill(&mut self, x: usize, y: usize, w: usize, h: usize, color: Rgb) {
        for row in y.min(HEIGHT)..(y + h).min(HEIGHT) {
            for col in x.min(WIDTH)..(x + w).min(WIDTH) {
                let at = (row * WIDTH + col) * 3;
                self.pixels[at..at + 3].copy_from_slice(&color);
            }
        }
    }

    /// Frame, grid lines and tick labels: five steps on each axis.
    fn axes(&mut self, x_max: f64, y_max: f64) {
        let plot_w = WIDTH - LEFT - RIGHT;
        let plot_h = HEIGHT - TOP - BOTTOM;
        for step in 0..=5 {
            let y = HEIGHT - BOTTOM - step * plot_h / 5;
            self.fill(LEFT, y, plot_w, 1, GREY);
            let label = format!("{:.0}", y_max * step as f64 / 5.0);
            self.text(
                LEFT.saturating_sub(10 + label.len() * 6 * SCALE),
                y.saturating_sub(7),
                &label,
                BLACK,
            );
            let x = LEFT + step * plot_w / 5;
            self.fill(x, HEIGHT - BOTTOM, 1, 6, BLACK);
            let label = short(x_max * step as f64 / 5.0);
            self.text(
                x.saturating_sub(label.len() * 3 * SCALE),
                HEIGHT - BOTTOM + 12,
                &label,
                BLACK,
            );
        }
        self.fill(LEFT, TOP, 1, plot_h, BLACK);
        self.fill(LEFT, HEIGHT - BOTTOM, plot_w, 1, BLACK);
    }

    fn text(&mut self, x: usize, y: usize, text: &str, color: Rgb) {
        for (i, c) in text.chars().enumerate() {
            let rows = glyph(c.to_ascii_uppercase());
            for (dy, bits) in rows.iter().enumerate() {
                for dx in 0..5 {
                    if bits & (0b10000 >> dx) != 0 {
                        self.fill(
                            x + (i * 6 + dx) * SCALE,
                            y + dy * SCALE,
                            SCALE,
                            SCALE,
                            color,
                        );
                    }
                }
            }
        }
    }

    fn write(&self, path: &Path) -> anyhow::Result<()> {
        let file = File::create(path).with_context(|| format!("creating {}", path.display()))?;
        let mut encoder = png::Encoder::new(BufWriter::new(file), WIDTH as u32, HEIGHT as u32);
        encoder.set_color(png::ColorType::Rgb);
        encoder.set_depth(png::BitDepth::Eight);
        let mut writer = encoder.write_header()?;
        writer.write_image_data(&self.pixels)?;
        writer.finish()?;
        Ok(())
    }
}

/// Rows of a 5×7 glyph, high bit on the left; unknown characters are blank.
fn glyph(c: char) -> [u8; 7] {
    match c {
        '0' => [0x0E, 0x11, 0x13, 0x15, 0x19, 0x11, 0x0E],
        '1' => [0x04, 0x0C, 0x04, 0x04, 0x04, 0x04, 0x0E],
        '2' => [0x0E, 0x11, 0x01, 0x02, 0x04, 0x08, 0x1F],
        '3' => [0x1F, 0x02, 0x04, 0x02, 0x01, 0x11, 0x0E],
        '4' => [0x02, 0x06, 0x0A, 0x12, 0x1F, 0x02, 0x02],
        '5' => [0x1F, 0x10, 0x1E, 0x01, 0x01, 0x11, 0x0E],
        '6' => [0x06, 0x08, 0x10, 0x1E, 0x11, 0x11, 0x0E],
        '7' => [0x1F, 0x01, 0x02, 0x04, 0x08, 0x08, 0x08],
        '8' => [0x0E, 0x11, 0x11, 0x0E, 0x11, 0x11, 0x0E],
        '9' => [0x0E, 0x11, 0x11, 0x0F, 0x01, 0x02, 0x0C],
        'A' => [0x0E, 0x11, 0x11, 0x1F, 0x11, 0x11, 0x11],
        'B' => [0x1E, 0x11, 0x11, 0x1E, 0x11, 0x11, 0x1E],
        'C' => [0x0E, 0x11, 0x10, 0x10, 0x10, 0x11, 0x0E],
        'D' => [0x1C, 0x12, 0x11, 0x11, 0x11, 0x12, 0x1C],
        'E' => [0x1F, 0x10, 0x10, 0x1E, 0x10, 0x10, 0x1F],
        'F' => [0x1F, 0x10, 0x10, 0x1E, 0x10, 0x10, 0x10],
        'G' => [0x0E, 0x11, 0x10, 0x17, 0x11, 0x11, 0x0F],
        'H' => [0x11, 0x11, 0x11, 0x1F, 0x11, 0x11, 0x11],
        'I' => [0x0E, 0x04, 0x04, 0x04, 0x04, 0x04, 0x0E],
        'J' => [0x07, 0x02, 0x02, 0x02, 0x02, 0x12, 0x0C],
        'K' => [0x11, 0x12, 0x14, 0x18, 0x14, 0x12, 0x11],
        'L' => [0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x1F],
        'M' => [0x11, 0x1B, 0x15, 0x15, 0x11, 0x11, 0x11],
        'N' => [0x11, 0x11, 0x19, 0x15, 0x13, 0x11, 0x11],
        'O' => [0x0E, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0E],
        'P' => [0x1E, 0x11, 0x11, 0x1E, 0x10, 0x10, 0x10],
        'Q' => [0x0E, 0x11, 0x11, 0x11, 0x15, 0x12, 0x0D],
        'R' => [0x1E, 0x11, 0x11, 0x1E, 0x14, 0x12, 0x11],
        'S' => [0x0F, 0x10, 0x10, 0x0E, 0x01, 0x01, 0x1E],
        'T' => [0x1F, 0x04, 0x04, 0x04, 0x04, 0x04, 0x04],
        'U' => [0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0E],
        'V' => [0x11, 0x11, 0x11, 0x11, 0x11, 0x0A, 0x04],
        'W' => [0x11, 0x11, 0x11, 0x15, 0x15, 0x15, 0x0A],
        'X' => [0x11, 0x11, 0x0A, 0x04, 0x0A, 0x11, 0x11],
        'Y' => [0x11, 0x11, 0x11, 0x0A, 0x04, 0x04, 0x04],
        'Z' => [0x1F, 0x01, 0x02, 0x04, 0x08, 0x10, 0x1F],
        '.' => [0x00, 0x00, 0x00, 0x00, 0x00, 0x0C, 0x0C],
        ',' => [0x00, 0x00, 0x00, 0x00, 0x0C, 0x04, 0x08],
        '=' => [0x00, 0x00, 0x1F, 0x00, 0x1F, 0x00, 0x00],
        '-' => [0x00, 0x00, 0x00, 0x1F, 0x00, 0x00, 0x00],
        '_' => [0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x1F],
        '(' => [0x02, 0x04, 0x08, 0x08, 0x08, 0x04, 0x02],
        ')' => [0x08, 0x04, 0x02, 0x02, 0x02, 0x04, 0x08],
        '/' => [0x00, 0x01, 0x02, 0x04, 0x08, 0x10, 0x00],
        ':' => [0x00, 0x0C, 0x0C, 0x00, 0x0C, 0x0C, 0x00],
        _ => [0; 7],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn axis_ends_are_round_numbers() {
        assert_eq!(nice_ceiling(3.2), 5.0);
        assert_eq!(nice_ceiling(17.0), 20.0);
        assert_eq!(nice_ceiling(100.0), 100.0);
        assert_eq!(nice_ceiling(0.3), 0.5);
    }

    #[test]
    fn a_histogram_is_written_as_a_png() {
        let path = std::env::temp_dir().join(format!("ot-lateness-{}.png", std::process::id()));
        let samples: Vec<f64> = (0..1000).map(|i| (i % 50) as f64 * 0.7).collect();
        lateness_histogram(&samples, &path).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        let _ = std::fs::remove_file(&path);
        assert_eq!(&bytes[1..4], b"PNG");
    }
}

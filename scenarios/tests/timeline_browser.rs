//! The picture of a run renders in a real browser: a `broker` bug-zoo witness from `seeds/`
//! is drawn with `scenarios::timeline`, opened in headless Chromium, and checked in the DOM
//! the browser built (the lanes, the violation mark, the axis the page's script draws) and in
//! a screenshot (decoded: not blank, the violation's red visible). Skipped, saying so, on a
//! machine without Chromium (`apt-get install chromium`; `.ci/run` installs it).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use scenarios::scenario::{run_case_observed, Observe};
use scenarios::Case;

const WITNESS: &str = "broker-ack-before-sync.toml";

fn browser() -> Option<&'static str> {
    ["chromium", "chromium-browser", "google-chrome"].into_iter().find(|b| {
        Command::new(b).arg("--version").stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok_and(|s| s.success())
    })
}

/// Runs headless `browser` with `args` on `page`; its stdout (through a file: a DOM fills a
/// pipe long before the browser exits), or a panic after two minutes.
fn headless(browser: &str, args: &[&str], page: &Path) -> String {
    let out_path = page.with_extension("stdout");
    let out = std::fs::File::create(&out_path).expect("browser output file");
    let mut child = Command::new(browser)
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--window-size=1400,700"])
        .args(args)
        .arg(format!("file://{}", page.display()))
        .stdout(out)
        .stderr(Stdio::null())
        .spawn()
        .expect("the browser starts");
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("waiting for the browser") {
            break status;
        }
        if started.elapsed() > Duration::from_secs(120) {
            let _ = child.kill();
            panic!("{browser} did not finish within two minutes");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{browser} {args:?} failed: {status:?}");
    std::fs::read_to_string(&out_path).expect("browser output")
}

/// The witness, replayed with its trace and probes, drawn into `dir`.
fn draw(dir: &Path) -> PathBuf {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../seeds").join(WITNESS);
    let case = Case::load(&path).expect("the witness loads");
    let outcome = run_case_observed(&case, Observe { keep_trace: true, collect_probes: true }).expect("runs");
    assert!(!outcome.violations.is_empty(), "the witness must fail to have a violation to draw");
    let page = dir.join("run.html");
    std::fs::write(&page, scenarios::timeline::render_html(&case, &outcome)).expect("page written");
    page
}

/// Pixels of an RGB(A) screenshot: (all, not white, violation red, distinct colours).
fn pixel_stats(png_path: &Path) -> (usize, usize, usize, usize) {
    let decoder = png::Decoder::new(std::fs::File::open(png_path).expect("screenshot exists"));
    let mut reader = decoder.read_info().expect("a PNG");
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).expect("a frame");
    let channels = match info.color_type {
        png::ColorType::Rgb => 3,
        png::ColorType::Rgba => 4,
        other => panic!("unexpected screenshot colour type {other:?}"),
    };
    assert_eq!(info.bit_depth, png::BitDepth::Eight);
    let pixels: Vec<&[u8]> = buf[..info.buffer_size()].chunks(channels).collect();
    let not_white = pixels.iter().filter(|p| p[0] < 240 || p[1] < 240 || p[2] < 240).count();
    let red = pixels.iter().filter(|p| p[0] > 200 && p[1] < 30 && p[2] < 30).count();
    let colours: std::collections::BTreeSet<[u8; 3]> = pixels.iter().map(|p| [p[0], p[1], p[2]]).collect();
    (pixels.len(), not_white, red, colours.len())
}

#[test]
fn a_broker_witness_renders_in_headless_chromium() {
    let Some(browser) = browser() else {
        println!("skipped: no headless Chromium on this machine (apt-get install chromium)");
        return;
    };
    sim::install_quiet_panic_hook();
    let dir = tempfile::tempdir().expect("temp dir");
    let page = draw(dir.path());

    let dom = headless(browser, &["--dump-dom"], &page);
    for node in ["broker", "producer-1", "producer-2", "consumer"] {
        assert!(dom.contains(&format!(r#"class="lane" data-node="{node}""#)), "no lane for {node}");
    }
    assert!(dom.contains(r#"id="violation""#), "no violation mark in the DOM");
    assert!(dom.contains(r#"id="violation-text""#), "no violation explanation in the DOM");
    assert!(dom.contains("[durability]"), "the explanation names the checker");
    assert!(dom.contains(r#"class="tick""#), "the page's script did not draw the time axis");
    assert!(dom.contains("showing 0.000 s to"), "the page's script did not report the range shown");

    let shot = dir.path().join("shot.png");
    headless(browser, &[&format!("--screenshot={}", shot.display())], &page);
    let (all, not_white, red, colours) = pixel_stats(&shot);
    assert_eq!(all, 1400 * 700, "screenshot size");
    assert!(not_white * 10 > all, "the screenshot is nearly blank: {not_white} of {all} pixels not white");
    assert!(colours >= 16, "the screenshot has only {colours} colours");
    assert!(red >= 100, "the violation's red is not visible ({red} pixels)");
}

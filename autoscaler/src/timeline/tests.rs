use super::*;

fn row(t: u32, rps: f64, replicas: u32, reason: &str) -> Row {
    Row {
        t: f64::from(t),
        offered_rps: rps,
        served_rps: rps,
        p95_ms: (rps > 0.0).then_some(rps),
        replicas,
        ready: replicas,
        desired: replicas,
        reason: reason.into(),
        ..Row::default()
    }
}

#[test]
fn aggregation_averages_rates_and_keeps_extremes() {
    let mut rows: Vec<Row> = (0..10).map(|t| row(t, f64::from(t), 2, "")).collect();
    rows[3].replicas = 5;
    rows[3].desired = 5;
    rows[3].ready = 1;
    rows[4].panic = true;
    rows[6].violation = true;
    rows[1].reason = "held".into();
    rows[2].desired = 4;
    rows[2].reason = "scaled".into();
    rows[3].reason = "held again".into();
    let out = downsample(&rows, 5.0);
    assert_eq!(out.len(), 2);
    let (a, b) = (&out[0], &out[1]);
    assert_eq!((a.t, b.t), (0.0, 5.0));
    assert_eq!(a.offered_rps, 2.0, "mean of 0..5");
    assert_eq!(b.offered_rps, 7.0, "mean of 5..10");
    assert_eq!(a.p95_ms, Some(4.0), "highest p95; the idle row has none");
    assert_eq!((a.replicas, a.ready, a.desired), (5, 1, 5));
    assert!(a.panic && !a.violation && b.violation && !b.panic);
    assert_eq!(a.reason, "scaled", "a scaling decision's reason wins");
    // Step 1: unchanged.
    assert_eq!(downsample(&rows, 1.0), rows);
}

#[test]
fn csv_has_one_header_and_a_label_column() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.csv");
    let tl = |label: &str| Timeline {
        label: label.into(),
        rows: vec![row(0, 0.0, 1, ""), row(1, 12.5, 2, "stable: a, b")],
    };
    write_csv(&path, &[tl("a"), tl("b,c")]).unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 5);
    assert_eq!(lines[0], csv::HEADER);
    assert_eq!(lines[1], "a,0,0,0,0,,0,0,1,1,1,0,0,");
    assert_eq!(
        lines[4],
        "\"b,c\",1,12.5,12.5,0,12.5,0,0,2,2,2,0,0,\"stable: a, b\""
    );
}

#[test]
fn chart_is_an_svg_with_every_label() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.svg");
    let rows = |k: f64| -> Vec<Row> {
        (0..4000)
            .map(|t| {
                let mut r = row(t, if t > 1000 { 100.0 * k } else { 10.0 }, 2, "");
                r.panic = (1000..1100).contains(&t);
                r.violation = (1000..1030).contains(&t);
                r.p95_ms = (t % 100 != 0).then_some(50.0 * k);
                r
            })
            .collect()
    };
    let timelines = [
        Timeline {
            label: "usher".into(),
            rows: rows(1.0),
        },
        Timeline {
            label: "hpa-like".into(),
            rows: rows(2.0),
        },
    ];
    render_chart(&path, "a test", &timelines).unwrap();
    let svg = std::fs::read_to_string(&path).unwrap();
    assert!(svg.starts_with("<svg"), "{}", &svg[..100.min(svg.len())]);
    assert!(svg.trim_end().ends_with("</svg>"));
    for text in [
        "a test",
        "usher",
        "hpa-like",
        "p95 latency",
        "served: usher",
    ] {
        assert!(svg.contains(text), "no {text:?} in the chart");
    }
    assert!(render_chart(&path, "empty", &[]).is_err());
}

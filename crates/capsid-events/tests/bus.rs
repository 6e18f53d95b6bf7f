//! The bus delivers in order, drops and counts on overflow (events from other hosts too), and
//! never blocks a publisher.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use capsid_events::{Delivery, EventBus, EventError, EventOrigin};

#[tokio::test]
async fn patterns_select_topics() {
    let bus = EventBus::new();
    let mut notes = bus.subscribe("notes.*", 16).unwrap();
    let mut all = bus.subscribe("*", 16).unwrap();
    let mut exact = bus.subscribe("files.changed", 16).unwrap();
    assert_eq!(
        bus.publish("notes.created", b"{}".to_vec(), None).unwrap(),
        Delivery {
            delivered: 2,
            dropped: 0
        }
    );
    bus.publish("files.changed", b"{}".to_vec(), None).unwrap();
    assert_eq!(notes.recv().await.unwrap().topic, "notes.created");
    assert!(notes.try_recv().is_none());
    assert_eq!(all.recv().await.unwrap().seq, 1);
    assert_eq!(all.recv().await.unwrap().seq, 2);
    assert_eq!(exact.recv().await.unwrap().topic, "files.changed");
}

#[tokio::test]
async fn a_full_queue_drops_and_counts_without_blocking_or_hurting_others() {
    let bus = EventBus::new();
    let mut slow = bus.subscribe("flood.*", 2).unwrap();
    let mut fast = bus.subscribe("flood.*", 64).unwrap();
    for i in 0..10u8 {
        bus.publish("flood.x", vec![i], None).unwrap();
    }
    assert_eq!(slow.dropped(), 8);
    assert_eq!(fast.dropped(), 0);
    let got: Vec<u8> = [slow.recv().await.unwrap(), slow.recv().await.unwrap()]
        .iter()
        .map(|e| e.payload[0])
        .collect();
    assert_eq!(got, [0, 1], "the oldest waiting events are kept, in order");
    for i in 0..10u8 {
        assert_eq!(fast.recv().await.unwrap().payload, vec![i]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_publishers_are_seen_in_one_order_by_everyone() {
    let bus = EventBus::new();
    let mut a = bus.subscribe("t.*", 4096).unwrap();
    let mut b = bus.subscribe("t.*", 4096).unwrap();
    let tasks: Vec<_> = (0..4)
        .map(|_| {
            let bus = bus.clone();
            tokio::spawn(async move {
                for _ in 0..500 {
                    bus.publish("t.x", Vec::new(), None).unwrap();
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let seqs = |s: &mut capsid_events::Subscription| {
        (0..2000)
            .map(|_| s.try_recv().unwrap().seq)
            .collect::<Vec<_>>()
    };
    let (sa, sb) = (seqs(&mut a), seqs(&mut b));
    assert_eq!(sa, sb);
    assert!(sa.windows(2).all(|w| w[0] < w[1]), "publish order");
}

#[tokio::test]
async fn dropped_subscriptions_are_forgotten() {
    let bus = EventBus::new();
    let gone = bus.subscribe("x.*", 4).unwrap();
    let _kept = bus.subscribe("x.*", 4).unwrap();
    drop(gone);
    bus.publish("x.y", Vec::new(), None).unwrap();
    assert_eq!(bus.subscriber_count(), 1);
}

#[test]
fn bad_topics_patterns_and_sizes_are_refused() {
    let bus = EventBus::new();
    for bad in [
        "",
        "Notes",
        "a..b",
        ".a",
        "a.",
        "a/b",
        "a b",
        "a\0b",
        &"a".repeat(256),
    ] {
        assert!(
            matches!(
                bus.publish(bad, Vec::new(), None),
                Err(EventError::Invalid { .. })
            ),
            "{bad:?}"
        );
    }
    assert!(
        bus.publish("a.*", Vec::new(), None).is_err(),
        "a topic cannot be a pattern"
    );
    assert!(matches!(
        bus.subscribe("a.*", 0),
        Err(EventError::BadCapacity(0))
    ));
    assert!(matches!(
        bus.subscribe("a.*", 1 << 20),
        Err(EventError::BadCapacity(_))
    ));
    let big = vec![0u8; capsid_core::limits::MAX_EVENT_PAYLOAD_BYTES + 1];
    assert!(matches!(
        bus.publish("a.b", big, None),
        Err(EventError::PayloadTooLarge { .. })
    ));
}

#[tokio::test]
async fn exported_topics_reach_the_exporter_and_remote_events_never_go_back() {
    let bus = EventBus::new();
    let mut exports = bus
        .export(&["orders.*".to_owned(), "alerts.fire".to_owned()], 2)
        .unwrap();
    let mut local = bus.subscribe("*", 16).unwrap();
    bus.publish("orders.new", b"1".to_vec(), None).unwrap();
    bus.publish("notes.new", b"2".to_vec(), None).unwrap();
    let origin = EventOrigin {
        host: "ab".into(),
        principal: None,
    };
    bus.publish_remote("orders.paid", b"3".to_vec(), None, origin.clone())
        .unwrap();
    let exported = exports.recv().await.unwrap();
    assert_eq!(exported.topic, "orders.new");
    assert!(exported.origin.is_none());
    assert!(
        exports.try_recv().is_none(),
        "neither an unexported topic nor a remote event is exported"
    );
    // Local subscribers see all three, the remote one with its origin.
    let seen: Vec<_> = (0..3).map(|_| local.try_recv().unwrap()).collect();
    assert_eq!(seen[2].origin.as_deref(), Some(&origin));

    // A full export queue drops and counts, and never holds up the publisher.
    for n in 0..5 {
        bus.publish("alerts.fire", vec![n], None).unwrap();
    }
    assert_eq!(exports.dropped(), 3);
    assert_eq!(exports.recv().await.unwrap().payload, vec![0]);
    assert!(matches!(
        bus.export(&["Bad".to_owned()], 2),
        Err(EventError::Invalid { .. })
    ));
}

#[tokio::test]
async fn remote_events_drop_and_count_at_a_slow_subscriber_as_local_ones_do() {
    let bus = EventBus::new();
    let mut slow = bus.subscribe("orders.*", 2).unwrap();
    let origin = EventOrigin {
        host: "ab".into(),
        principal: Some("user:x".into()),
    };
    for i in 0..5u8 {
        let delivery = bus
            .publish_remote("orders.paid", vec![i], None, origin.clone())
            .unwrap();
        let kept = i < 2;
        assert_eq!(
            delivery,
            Delivery {
                delivered: usize::from(kept),
                dropped: usize::from(!kept)
            },
            "event {i}"
        );
    }
    assert_eq!(slow.dropped(), 3);
    for i in 0..2u8 {
        let event = slow.recv().await.unwrap();
        assert_eq!(event.payload, vec![i], "the oldest waiting events are kept");
        assert_eq!(event.origin.as_deref(), Some(&origin));
    }
    assert!(slow.try_recv().is_none());
}

//! Guards topics (protocol.md 2.8, 6.5): TOPIC_PUB reaches every other subscriber as
//! TOPIC_MESSAGE in publish order, never the publisher, stops after TOPIC_UNSUB, and carries
//! `data` untouched whatever its MessagePack type. A reordered or rewritten message breaks chat
//! and presence features built on topics.
mod common;

use common::proto::*;
use common::*;
use rmpv::Value;

const N: u64 = 200;

/// Reads `n` TOPIC_MESSAGEs of `topic`; anything else on the socket is a failure.
async fn read_messages(c: &mut Client, topic: &str, n: usize) -> Vec<Value> {
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let v = c
            .recv()
            .await
            .unwrap_or_else(|| panic!("only {} of {n} TOPIC_MESSAGEs arrived", out.len()));
        assert_eq!(msg_type(&v), "TOPIC_MESSAGE", "{v:?}");
        assert_eq!(pstr(&v, "topic"), Some(topic));
        let ts = get(payload(&v), "timestamp")
            .map(as_u64)
            .expect("timestamp");
        assert!(ts > 1_700_000_000_000, "server ms: {ts}");
        assert!(
            get(payload(&v), "publisherId").is_none(),
            "omitted for WebSocket publishers"
        );
        out.push(get(payload(&v), "data").cloned().expect("data"));
    }
    out
}

#[tokio::test]
async fn fan_out_to_three_subscribers_in_publish_order() {
    let node = Node::start();
    let mut subs = Vec::new();
    for _ in 0..3 {
        let mut c = node.authed_client().await;
        c.send(&topic_sub("chat/room-1")).await;
        // No reply to TOPIC_SUB; the PONG proves it was processed before we publish.
        assert!(c.ping_pong().await.is_empty());
        subs.push(c);
    }
    let mut publisher = node.authed_client().await;
    // The publisher is subscribed too: it still must not get its own messages.
    publisher.send(&topic_sub("chat/room-1")).await;
    publisher.ping_pong().await;

    for i in 0..N {
        publisher
            .send(&topic_pub("chat/room-1", map(&[("seq", i.into())])))
            .await;
    }
    let readers = subs.into_iter().map(|mut c| {
        tokio::spawn(async move {
            let got = read_messages(&mut c, "chat/room-1", N as usize).await;
            (c, got)
        })
    });
    let mut subs = Vec::new();
    for r in readers {
        let (c, got) = r.await.unwrap();
        let seqs: Vec<u64> = got
            .iter()
            .map(|d| get(d, "seq").and_then(Value::as_u64).unwrap())
            .collect();
        assert_eq!(seqs, (0..N).collect::<Vec<_>>(), "publish order kept");
        subs.push(c);
    }
    let own = publisher.ping_pong().await;
    assert!(own.is_empty(), "publisher got {} messages", own.len());

    // TOPIC_UNSUB stops delivery to that subscriber only.
    subs[0].send(&topic_unsub("chat/room-1")).await;
    subs[0].ping_pong().await;
    publisher
        .send(&topic_pub("chat/room-1", "after-unsub".into()))
        .await;
    for c in &mut subs[1..] {
        assert_eq!(
            read_messages(c, "chat/room-1", 1).await,
            [Value::from("after-unsub")]
        );
    }
    // Stripe order: a later message on the same topic via the still-subscribed ones proves the
    // unsubscribed one had its chance to receive "after-unsub".
    publisher
        .send(&topic_pub("chat/room-1", "last".into()))
        .await;
    for c in &mut subs[1..] {
        assert_eq!(
            read_messages(c, "chat/room-1", 1).await,
            [Value::from("last")]
        );
    }
    let stray = subs[0].ping_pong().await;
    assert!(stray.is_empty(), "after TOPIC_UNSUB: {stray:?}");
}

#[tokio::test]
async fn data_passes_through_untouched() {
    let node = Node::start();
    let mut sub = node.authed_client().await;
    sub.send(&topic_sub("t")).await;
    sub.ping_pong().await;
    let mut publisher = node.authed_client().await;
    let samples = vec![
        Value::Nil,
        Value::Array(vec![1.into(), "two".into(), Value::Nil, Value::F64(3.5)]),
        map(&[
            (
                "a",
                map(&[("b", map(&[("c", Value::Array(vec![true.into()]))]))]),
            ),
            ("bin", Value::Binary(vec![0, 1, 2, 255])),
            ("neg", Value::from(-42)),
            ("big", Value::from(u64::MAX)),
        ]),
        Value::from("plain string"),
        Value::F64(1.0e300),
        Value::Boolean(false),
        Value::Array(vec![]),
        map(&[]),
    ];
    for d in &samples {
        publisher.send(&topic_pub("t", d.clone())).await;
    }
    let got = read_messages(&mut sub, "t", samples.len()).await;
    assert_eq!(got, samples);
}

#[tokio::test]
async fn topics_are_separate_and_closed_connections_drop_out() {
    let node = Node::start();
    let mut a = node.authed_client().await;
    let mut b = node.authed_client().await;
    a.send(&topic_sub("alpha")).await;
    b.send(&topic_sub("beta")).await;
    a.ping_pong().await;
    b.ping_pong().await;
    let mut gone = node.authed_client().await;
    gone.send(&topic_sub("alpha")).await;
    gone.ping_pong().await;
    drop(gone);

    let mut p = node.authed_client().await;
    p.send(&topic_pub("alpha", 1.into())).await;
    p.send(&topic_pub("beta", 2.into())).await;
    assert_eq!(read_messages(&mut a, "alpha", 1).await, [Value::from(1)]);
    assert_eq!(read_messages(&mut b, "beta", 1).await, [Value::from(2)]);
    assert!(a.ping_pong().await.is_empty());
    assert!(b.ping_pong().await.is_empty());
    // The node stays up and answers the publisher.
    assert!(p.ping_pong().await.is_empty());
}

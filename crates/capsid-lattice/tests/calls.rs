//! The call protocol on a real `nats-server`: a caller hands its call to the first serving
//! host that asks, names that host to any other (a replayed copy's host, or the same host
//! asking again), and once the call has ended answers nobody; a host handed nothing in time,
//! or told the caller is gone, gives the call up and tells the caller, who then knows it did
//! not run.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use async_nats::Subscriber;
use bytes::Bytes;
use capsid_crypto::KeyPair;
use capsid_lattice::calls::{
    self, CallMeta, CallOutcome, CallQueue, IncomingCall, NotHanded, RemoteCallError,
};
use capsid_lattice::local::LocalCluster;
use capsid_lattice::{Kind, Lattice, LatticeConfig, Refusal, Seal, Sealed};
use futures_util::StreamExt as _;
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::TcpStream;

const LATTICE: &str = "calls";

/// A host: its connection and its seal, trusting `keys`.
async fn host(
    cluster: &LocalCluster,
    key: &Arc<KeyPair>,
    keys: &[Arc<KeyPair>],
) -> (Lattice, Seal) {
    let config = LatticeConfig {
        name: LATTICE.into(),
        servers: cluster.urls(),
        replicas: 1,
        credentials: None,
        trusted_hosts: Vec::new(),
        export: Vec::new(),
    };
    let lattice = Lattice::connect(&config, std::path::Path::new("/"))
        .await
        .unwrap();
    let trusted: Vec<_> = keys.iter().map(|k| k.public_key()).collect();
    (lattice, Seal::new(LATTICE, key.clone(), &trusted))
}

/// `N` hosts of one lattice, each trusting all of them.
async fn hosts<const N: usize>(cluster: &LocalCluster) -> [(Lattice, Seal); N] {
    let keys: Vec<Arc<KeyPair>> = (0..N)
        .map(|_| Arc::new(KeyPair::generate().unwrap()))
        .collect();
    let mut made = Vec::new();
    for key in &keys {
        made.push(host(cluster, key, &keys).await);
    }
    made.try_into()
        .unwrap_or_else(|_| panic!("{N} hosts were made"))
}

/// Serves `hello` as `host`; returns once the subscription is in place at the server.
async fn serve(host: &(Lattice, Seal)) -> CallQueue {
    let queue = calls::serve(&host.0, &host.1, "hello").await.unwrap();
    settled(host.0.client()).await;
    queue
}

async fn next_call(queue: &mut CallQueue) -> IncomingCall {
    tokio::time::timeout(Duration::from_secs(10), queue.next())
        .await
        .expect("a call arrives")
        .unwrap()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_is_handed_to_the_first_host_that_asks_and_to_no_other() {
    let cluster = LocalCluster::start(1).await.unwrap();
    let [a, b, c, d] = hosts::<4>(&cluster).await;
    let mut spy =
        a.0.client()
            .subscribe(calls::call_subject(LATTICE, "hello"))
            .await
            .unwrap();
    let mut served_by_b = serve(&b).await;

    let caller = spawn_greet(&a);
    let at_b = next_call(&mut served_by_b).await;
    let copy = spy.next().await.unwrap();
    // From here on, only C hears the capsule's calls (B's unsubscribe is in place at the
    // server).
    drop(served_by_b);
    settled(b.0.client()).await;
    let mut served_by_c = serve(&c).await;

    at_b.replier
        .take()
        .await
        .expect("B asked first: the call is B's");
    // Each step below says the call still runs, so the caller does not give B up meanwhile.
    at_b.replier.running().await;
    let replay = || {
        let client = a.0.client();
        let (headers, body) = (copy.headers.clone().unwrap(), copy.payload.clone());
        let (subject, reply) = (copy.subject.clone(), copy.reply.clone().unwrap());
        async move {
            client
                .publish_with_reply_and_headers(subject, reply, headers, body)
                .await
                .unwrap();
        }
    };
    replay().await;
    let at_c = next_call(&mut served_by_c).await;
    assert_eq!(at_c.call.nonce, at_b.call.nonce, "C got the same call");
    assert_eq!(at_c.replier.take().await, Err(NotHanded::Elsewhere));
    at_b.replier.running().await;
    // B asking again (as after a restart) is another request: not the one handed the call.
    assert_eq!(at_b.replier.take().await, Err(NotHanded::Elsewhere));

    at_b.replier
        .done(CallOutcome::Ok, Bytes::from_static(b"hi"))
        .await;
    let answer = caller.await.unwrap().unwrap();
    assert_eq!(answer.host, b.1.host());
    assert_eq!(answer.output, Bytes::from_static(b"hi"));

    // A copy seen before is refused on sight; one reaching a host that never saw it finds
    // nobody to hand it over: the call has ended.
    replay().await;
    let seen = tokio::time::timeout(Duration::from_secs(10), served_by_c.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(seen.unwrap_err(), Refusal::Replayed);
    drop(served_by_c);
    settled(c.0.client()).await;
    let mut served_by_d = serve(&d).await;
    replay().await;
    let at_d = next_call(&mut served_by_d).await;
    assert!(
        matches!(at_d.replier.take().await, Err(NotHanded::Unanswered(_))),
        "nobody hands over a call that ended"
    );
}

/// `caller` calling hello's `greet`, in a task of its own, until it is answered.
fn spawn_greet(
    caller: &(Lattice, Seal),
) -> tokio::task::JoinHandle<Result<calls::RemoteAnswer, RemoteCallError>> {
    let (lattice, seal) = caller.clone();
    tokio::spawn(async move {
        let input = Bytes::from_static(b"{}");
        calls::call(
            &lattice,
            &seal,
            &greet(),
            input,
            None,
            std::future::pending(),
        )
        .await
    })
}

/// The envelope header of `message`, parsed.
fn envelope(message: &async_nats::Message) -> serde_json::Value {
    let header = message
        .headers
        .as_ref()
        .and_then(|h| h.get("Capsid-Envelope"));
    serde_json::from_str(header.unwrap().as_str()).unwrap()
}

/// A call of hello's `greet`, as a calling host fills it in.
fn greet() -> CallMeta {
    CallMeta {
        capsule: "hello".into(),
        tool: "greet".into(),
        principal: "user:someone".into(),
        client: None,
        deadline_ms: None,
        reply_to: String::new(),
    }
}

/// Calls hello's `greet` as `caller`, by hand: the call sent, and its inbox, where the
/// serving host's requests arrive and nobody answers them unless the test does.
async fn call_by_hand(caller: &(Lattice, Seal)) -> (Sealed, Subscriber) {
    let client = caller.0.client();
    let inbox = client.new_inbox();
    let asked = client.subscribe(inbox.clone()).await.unwrap();
    let signed = CallMeta {
        reply_to: inbox.clone(),
        ..greet()
    };
    let call = caller.1.seal(Kind::Call, &signed, Bytes::new());
    let subject = calls::call_subject(LATTICE, "hello");
    client
        .publish_with_reply_and_headers(subject, inbox, call.headers.clone(), call.body.clone())
        .await
        .unwrap();
    (call, asked)
}

/// Returns once the server has taken every subscription and unsubscription `client` sent so
/// far: it handles each connection's messages in order, so they are in place once a message
/// published after them comes back. (A flush only says they left this process.)
async fn settled(client: &async_nats::Client) {
    let probe = client.new_inbox();
    let mut echo = client.subscribe(probe.clone()).await.unwrap();
    client.publish(probe, Bytes::new()).await.unwrap();
    next_on(&mut echo).await;
}

/// The next message on `inbox`, within ten seconds.
async fn next_on(inbox: &mut Subscriber) -> async_nats::Message {
    tokio::time::timeout(Duration::from_secs(10), inbox.next())
        .await
        .expect("a message arrives")
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_callers_own_handover_counts() {
    let cluster = LocalCluster::start(1).await.unwrap();
    let [a, b, c] = hosts::<3>(&cluster).await;
    let mut served_by_b = serve(&b).await;
    let client = a.0.client();
    // A, by hand, so that what others send B reaches it before A's own handover.
    let (call, mut asked) = call_by_hand(&a).await;
    let at_b = next_call(&mut served_by_b).await;
    let taking = {
        let replier = at_b.replier.clone();
        tokio::spawn(async move { replier.take().await })
    };
    let asking = next_on(&mut asked).await;
    let to_b = asking.reply.clone().unwrap();
    let request = envelope(&asking)["nonce"].clone();
    let handover = |seal: &Seal, call: &str, to: &str| {
        let meta = serde_json::json!({ "call": call, "to": to, "taking": request });
        seal.seal(Kind::Handover, &meta, Bytes::new())
    };
    // Junk, a trusted host other than the caller, the caller naming another call: each is
    // passed over (had one counted, B would hear the call was handed to C); then the
    // caller's own handover.
    let c_hex = c.1.host().to_owned();
    let in_order = [
        handover(&c.1, &call.nonce, &c_hex),
        handover(&a.1, "another-call", &c_hex),
        handover(&a.1, &call.nonce, b.1.host()),
    ];
    client
        .publish(to_b.clone(), Bytes::from_static(b"junk"))
        .await
        .unwrap();
    for sealed in in_order {
        client
            .publish_with_headers(to_b.clone(), sealed.headers, sealed.body)
            .await
            .unwrap();
    }
    assert_eq!(
        taking.await.unwrap(),
        Ok(()),
        "only the caller's handover counted"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_hands_nothing_to_a_host_it_does_not_trust() {
    let cluster = LocalCluster::start(1).await.unwrap();
    let [a, b] = hosts::<2>(&cluster).await;
    let stranger = host(&cluster, &Arc::new(KeyPair::generate().unwrap()), &[]).await;
    let mut served_by_b = serve(&b).await;
    let mut spy =
        a.0.client()
            .subscribe(calls::call_subject(LATTICE, "hello"))
            .await
            .unwrap();
    settled(a.0.client()).await;
    let caller = spawn_greet(&a);
    let copy = spy.next().await.unwrap();
    let at_b = next_call(&mut served_by_b).await;
    // The stranger asks first, with a request as a trusted host would make it.
    let strangers = stranger.0.client();
    let inbox = strangers.new_inbox();
    let mut answers = strangers.subscribe(inbox.clone()).await.unwrap();
    let ask = serde_json::json!({
        "state": "taking", "call": at_b.call.nonce, "reply_to": inbox,
    });
    let sealed = stranger.1.seal(Kind::Reply, &ask, Bytes::new());
    strangers
        .publish_with_reply_and_headers(
            copy.reply.clone().unwrap(),
            inbox,
            sealed.headers,
            sealed.body,
        )
        .await
        .unwrap();
    let answered = tokio::time::timeout(Duration::from_secs(1), answers.next()).await;
    assert!(
        answered.is_err(),
        "the caller answered a stranger: {answered:?}"
    );
    // It is still the first trusted host's to take.
    at_b.replier
        .take()
        .await
        .expect("B is the first trusted host to ask");
    at_b.replier.done(CallOutcome::Ok, Bytes::new()).await;
    assert_eq!(caller.await.unwrap().unwrap().host, b.1.host());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_of_the_earlier_call_protocol_never_hears_a_call() {
    let cluster = LocalCluster::start(1).await.unwrap();
    let [a, b] = hosts::<2>(&cluster).await;
    // Where a host of the earlier release listens for hello's calls.
    let mut earlier =
        b.0.client()
            .queue_subscribe(format!("capsid.{LATTICE}.call.hello"), "hello".into())
            .await
            .unwrap();
    settled(b.0.client()).await;
    let input = Bytes::from_static(b"{}");
    let err = calls::call(&a.0, &a.1, &greet(), input, None, std::future::pending())
        .await
        .unwrap_err();
    assert_eq!(err, calls::RemoteCallError::NoHost("hello".into()));
    let heard = tokio::time::timeout(Duration::from_millis(500), earlier.next()).await;
    assert!(
        heard.is_err(),
        "an earlier-release host heard the call: {heard:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_handed_nothing_in_time_gives_the_call_up_and_tells_its_caller() {
    let cluster = LocalCluster::start(1).await.unwrap();
    let [a, b] = hosts::<2>(&cluster).await;
    let mut served_by_b = serve(&b).await;
    // A hears B ask for the call and never answers.
    let (call, mut asked) = call_by_hand(&a).await;
    let at_b = next_call(&mut served_by_b).await;
    let taken = at_b.replier.take().await;
    assert!(
        matches!(taken, Err(NotHanded::Unanswered(_))),
        "B ran a call nobody handed it: {taken:?}"
    );
    let open = |message: &async_nats::Message| {
        a.1.open::<serde_json::Value>(Kind::Reply, message.headers.as_ref(), &message.payload)
            .unwrap()
    };
    let asking = open(&next_on(&mut asked).await);
    assert_eq!(asking.meta["state"], "taking");
    let declined = open(&next_on(&mut asked).await);
    assert_eq!(declined.from, b.1.host());
    assert_eq!(
        declined.meta,
        serde_json::json!({ "state": "declined", "call": call.nonce, "taking": asking.nonce })
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_no_responders_on_a_hosts_request_makes_it_give_the_call_up_and_say_so() {
    let cluster = LocalCluster::start(1).await.unwrap();
    let [a, b] = hosts::<2>(&cluster).await;
    let mut served_by_b = serve(&b).await;
    // Connected before the call: B waits only so long for its handover.
    let mut forger = RawClient::connect(&cluster.url(0)).await;
    let (call, mut asked) = call_by_hand(&a).await;
    let at_b = next_call(&mut served_by_b).await;
    let taking = {
        let replier = at_b.replier.clone();
        tokio::spawn(async move { replier.take().await })
    };
    let asking = next_on(&mut asked).await;
    let to_b = asking.reply.clone().unwrap();
    // Anyone able to publish to B's inbox can say the caller is gone (a status line is not
    // signed): B then gives the call up, and the caller learns it did not run.
    forger.forge_status(&to_b, 503).await;
    let taken = taking.await.unwrap();
    assert!(
        matches!(&taken, Err(NotHanded::Unanswered(why)) if why.contains("no longer waits")),
        "B did not give the call up on hearing the forged word (rather than on its handover \
         wait, which says so otherwise): {taken:?}"
    );
    let open = |message: &async_nats::Message| {
        a.1.open::<serde_json::Value>(Kind::Reply, message.headers.as_ref(), &message.payload)
            .unwrap()
    };
    let asking = open(&asking);
    let declined = open(&next_on(&mut asked).await);
    assert_eq!(declined.from, b.1.host());
    assert_eq!(
        declined.meta,
        serde_json::json!({ "state": "declined", "call": call.nonce, "taking": asking.nonce })
    );
}

/// A raw NATS client, to send what no client library sends.
struct RawClient(BufReader<TcpStream>);

impl RawClient {
    /// Connects to the server at `url` (headers on).
    async fn connect(url: &str) -> Self {
        let address = url.trim_start_matches("nats://");
        let mut server = BufReader::new(TcpStream::connect(address).await.unwrap());
        let mut line = String::new();
        server.read_line(&mut line).await.unwrap();
        assert!(line.starts_with("INFO"), "not a NATS server: {line}");
        let mut client = Self(server);
        client
            .send("CONNECT {\"verbose\":false,\"pedantic\":false,\"headers\":true,\"protocol\":1}\r\n")
            .await;
        client
    }

    /// Publishes to `subject` what only a server should say: a status line with `code`
    /// and nothing else.
    async fn forge_status(&mut self, subject: &str, code: u16) {
        let status = format!("NATS/1.0 {code}\r\n\r\n");
        let len = status.len();
        self.send(&format!("HPUB {subject} {len} {len}\r\n{status}\r\n"))
            .await;
    }

    /// Sends `frames`, then a PING, and waits for the server's PONG: it has taken them.
    async fn send(&mut self, frames: &str) {
        let frames = format!("{frames}PING\r\n");
        self.0.get_mut().write_all(frames.as_bytes()).await.unwrap();
        let mut line = String::new();
        loop {
            line.clear();
            self.0.read_line(&mut line).await.unwrap();
            assert!(
                !line.starts_with("-ERR"),
                "the server refused the frames: {line}"
            );
            if line.starts_with("PONG") {
                return;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_whose_holder_gave_the_call_up_says_it_did_not_run() {
    let cluster = LocalCluster::start(1).await.unwrap();
    let [a, b, c] = hosts::<3>(&cluster).await;
    let mut served_by_b = serve(&b).await;
    // C sees each call (a plain subscription beside B's queue group), and its inbox.
    let mut spy =
        c.0.client()
            .subscribe(calls::call_subject(LATTICE, "hello"))
            .await
            .unwrap();
    settled(c.0.client()).await;
    let declined = |seal: &Seal, call: &str, taking: &str| {
        let meta = serde_json::json!({ "state": "declined", "call": call, "taking": taking });
        seal.seal(Kind::Reply, &meta, Bytes::new())
    };
    // The first call B gives up, saying so; in the second, only a word from another host and
    // one naming another request of B's come before B's answer: neither counts.
    for gives_up in [true, false] {
        let caller = spawn_greet(&a);
        let copy = next_on(&mut spy).await;
        let inbox = copy.reply.clone().unwrap();
        let mut on_inbox = c.0.client().subscribe(inbox.clone()).await.unwrap();
        settled(c.0.client()).await;
        let at_b = next_call(&mut served_by_b).await;
        at_b.replier.take().await.expect("the call is B's");
        let request = envelope(&next_on(&mut on_inbox).await)["nonce"]
            .as_str()
            .unwrap()
            .to_owned();
        let call = at_b.call.nonce.clone();
        if gives_up {
            let sealed = declined(&b.1, &call, &request);
            let client = b.0.client();
            client
                .publish_with_headers(inbox, sealed.headers, sealed.body)
                .await
                .unwrap();
            let host = b.1.host().to_owned();
            let capsule = "hello".to_owned();
            assert_eq!(
                caller.await.unwrap().unwrap_err(),
                RemoteCallError::Declined { host, capsule }
            );
        } else {
            for (host, taking) in [(&c, request.as_str()), (&b, "another-request")] {
                let sealed = declined(&host.1, &call, taking);
                let client = host.0.client();
                client
                    .publish_with_headers(inbox.clone(), sealed.headers, sealed.body)
                    .await
                    .unwrap();
                // In the server before what comes next is.
                settled(client).await;
            }
            at_b.replier.done(CallOutcome::Ok, Bytes::new()).await;
            assert_eq!(caller.await.unwrap().unwrap().host, b.1.host());
        }
    }
}

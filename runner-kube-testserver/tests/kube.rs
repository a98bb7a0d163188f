//! The test API server driven through kube-rs only, on a real dockerd with
//! the busybox test image.

use std::process::ExitCode;
use std::time::Duration;

use futures_util::{StreamExt, TryStreamExt};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use kube::api::{AttachParams, DeleteParams, ListParams, PostParams, WatchEvent, WatchParams};
use kube::{Api, Client, Config};
use runner_kube_testserver::{KubeTestServer, KubeTestServerOptions};
use runner_testkit::{BackendGate, async_trial};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

type R = Result<(), String>;

fn image() -> String {
    std::env::var("RUNNER_TEST_DOCKER_IMAGE")
        .unwrap_or_else(|_| "runners-test-busybox:latest".into())
}

async fn setup() -> Result<(KubeTestServer, Api<Pod>), String> {
    let server = KubeTestServer::start(KubeTestServerOptions::default())
        .await
        .map_err(|e| e.to_string())?;
    let kubeconfig =
        kube::config::Kubeconfig::read_from(server.kubeconfig_path()).map_err(|e| e.to_string())?;
    let config = Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .map_err(|e| e.to_string())?;
    let client = Client::try_from(config).map_err(|e| e.to_string())?;
    let pods = Api::namespaced(client, server.namespace());
    Ok((server, pods))
}

fn pod(name: &str, image: &str, extra: serde_json::Value) -> Pod {
    let mut value = serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": "t"}},
        "spec": {"restartPolicy": "Never", "containers": [{"name": "main", "image": image, "command": ["sleep", "600"]}]}
    });
    if let Some(map) = extra.as_object() {
        for (k, v) in map {
            value["spec"][k] = v.clone();
        }
    }
    serde_json::from_value(value).unwrap()
}

async fn wait_for(pods: &Api<Pod>, name: &str, what: impl Fn(&Pod) -> bool) -> Result<Pod, String> {
    for _ in 0..200 {
        let p = pods.get(name).await.map_err(|e| e.to_string())?;
        if what(&p) {
            return Ok(p);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err(format!("pod {name} never reached the state"))
}

fn phase(p: &Pod) -> &str {
    p.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("")
}

async fn running(pods: &Api<Pod>, name: &str) -> Result<Pod, String> {
    pods.create(
        &PostParams::default(),
        &pod(name, &image(), serde_json::json!({})),
    )
    .await
    .map_err(|e| e.to_string())?;
    wait_for(pods, name, |p| phase(p) == "Running").await
}

fn api_code(e: kube::Error) -> u16 {
    match e {
        kube::Error::Api(s) => s.code,
        _ => 0,
    }
}

async fn lifecycle_create_list_watch_delete() -> R {
    let (server, pods) = setup().await?;
    let list = pods
        .list(&ListParams::default())
        .await
        .map_err(|e| e.to_string())?;
    let rv = list.metadata.resource_version.clone().unwrap_or_default();
    let mut stream = pods
        .watch(&WatchParams::default().labels("app=t"), &rv)
        .await
        .map_err(|e| e.to_string())?
        .boxed();
    pods.create(
        &PostParams::default(),
        &pod("p1", &image(), serde_json::json!({})),
    )
    .await
    .map_err(|e| e.to_string())?;
    let mut saw_pending = false;
    loop {
        let event = tokio::time::timeout(Duration::from_secs(30), stream.try_next())
            .await
            .map_err(|_| "watch timed out")?
            .map_err(|e| e.to_string())?;
        match event {
            Some(WatchEvent::Added(p)) if phase(&p) == "Pending" => saw_pending = true,
            Some(WatchEvent::Modified(p)) if phase(&p) == "Running" => {
                let ready = p
                    .status
                    .as_ref()
                    .and_then(|s| s.container_statuses.as_ref())
                    .map(|c| c[0].ready);
                if ready != Some(true) || p.status.as_ref().and_then(|s| s.pod_ip.clone()).is_none()
                {
                    return Err("running without ready container or pod IP".into());
                }
                break;
            }
            Some(_) => {}
            None => return Err("watch ended".into()),
        }
    }
    if !saw_pending {
        return Err("no Pending ADDED event".into());
    }
    let listed = pods
        .list(
            &ListParams::default()
                .labels("app in (t,u)")
                .fields("metadata.name=p1"),
        )
        .await
        .map_err(|e| e.to_string())?;
    if listed.items.len() != 1 {
        return Err(format!("list found {} pods", listed.items.len()));
    }
    let conflict = pods
        .create(
            &PostParams::default(),
            &pod("p1", &image(), serde_json::json!({})),
        )
        .await;
    if conflict.map_err(api_code) != Err(409) {
        return Err("a second create was not 409".into());
    }
    pods.delete(
        "p1",
        &DeleteParams {
            grace_period_seconds: Some(1),
            ..Default::default()
        },
    )
    .await
    .map_err(|e| e.to_string())?;
    if pods.get("p1").await.map_err(api_code).err() != Some(404) {
        return Err("the pod is still there after delete".into());
    }
    server.shutdown().await;
    Ok(())
}

async fn refusals_422_409_403() -> R {
    let (server, pods) = setup().await?;
    let empty: Pod = serde_json::from_value(
        serde_json::json!({"metadata": {"name": "e"}, "spec": {"containers": []}}),
    )
    .unwrap();
    match pods.create(&PostParams::default(), &empty).await {
        Err(kube::Error::Api(s)) if s.code == 422 && s.message.contains("spec.containers") => {}
        other => {
            return Err(format!(
                "expected 422 naming spec.containers, got {other:?}"
            ));
        }
    }
    let p = running(&pods, "p2").await?;
    let mut stale = p.clone();
    stale
        .metadata
        .labels
        .get_or_insert_default()
        .insert("x".into(), "1".into());
    pods.replace("p2", &PostParams::default(), &stale)
        .await
        .map_err(|e| e.to_string())?;
    stale
        .metadata
        .labels
        .get_or_insert_default()
        .insert("x".into(), "2".into());
    if pods
        .replace("p2", &PostParams::default(), &stale)
        .await
        .map_err(api_code)
        .err()
        != Some(409)
    {
        return Err("a stale replace was not 409".into());
    }
    server.forbid("create", "pods/exec");
    match pods.exec("p2", ["true"], &AttachParams::default()).await {
        Err(kube::Error::Api(s))
            if s.code == 403 && s.message.contains("cannot create resource \"pods/exec\"") => {}
        Err(e) => return Err(format!("expected 403, got {e}")),
        Ok(_) => return Err("exec was allowed".into()),
    }
    server.shutdown().await;
    Ok(())
}

async fn exec_output_status_and_stdin() -> R {
    let (server, pods) = setup().await?;
    running(&pods, "p3").await?;
    let mut hi = pods
        .exec("p3", ["echo", "hi"], &AttachParams::default().stderr(false))
        .await
        .map_err(|e| e.to_string())?;
    let mut out = String::new();
    hi.stdout()
        .unwrap()
        .read_to_string(&mut out)
        .await
        .map_err(|e| e.to_string())?;
    let status = hi.take_status().unwrap().await.ok_or("no status")?;
    if out != "hi\n" || status.status.as_deref() != Some("Success") {
        return Err(format!("echo hi gave {out:?} and {status:?}"));
    }
    let mut three = pods
        .exec("p3", ["sh", "-c", "exit 3"], &AttachParams::default())
        .await
        .map_err(|e| e.to_string())?;
    let status = three.take_status().unwrap().await.ok_or("no status")?;
    let cause = status
        .details
        .as_ref()
        .and_then(|d| d.causes.as_ref())
        .and_then(|c| c.first())
        .and_then(|c| c.message.clone());
    if status.reason.as_deref() != Some("NonZeroExitCode") || cause.as_deref() != Some("3") {
        return Err(format!("exit 3 gave {status:?}"));
    }
    let mut cat = pods
        .exec(
            "p3",
            ["cat"],
            &AttachParams::default().stdin(true).stderr(false),
        )
        .await
        .map_err(|e| e.to_string())?;
    let mut stdin = cat.stdin().unwrap();
    stdin
        .write_all(b"through stdin")
        .await
        .map_err(|e| e.to_string())?;
    // The end of stdin (the v5 close frame) is sent on shutdown; dropping
    // the writer alone does not end the pipe.
    stdin.shutdown().await.map_err(|e| e.to_string())?;
    let mut out = String::new();
    cat.stdout()
        .unwrap()
        .read_to_string(&mut out)
        .await
        .map_err(|e| e.to_string())?;
    if out != "through stdin" {
        return Err(format!("cat gave {out:?}"));
    }
    let status = cat
        .take_status()
        .unwrap()
        .await
        .ok_or("no status for cat")?;
    if status.status.as_deref() != Some("Success") {
        return Err(format!("cat gave {status:?}"));
    }
    server.shutdown().await;
    Ok(())
}

async fn read_exactly(
    reader: &mut (impl tokio::io::AsyncRead + Unpin),
    len: usize,
) -> Result<Vec<u8>, String> {
    let mut bytes = vec![0; len];
    tokio::time::timeout(Duration::from_secs(10), reader.read_exact(&mut bytes))
        .await
        .map_err(|_| format!("{len} bytes did not come back in time"))?
        .map_err(|e| e.to_string())?;
    Ok(bytes)
}

async fn exec_cat_streams_both_ways() -> R {
    let (server, pods) = setup().await?;
    running(&pods, "cat").await?;
    let params = AttachParams::default()
        .stdin(true)
        .stderr(false)
        .max_stdin_buf_size(64 << 10)
        .max_stdout_buf_size(64 << 10);
    let mut cat = pods
        .exec("cat", ["cat"], &params)
        .await
        .map_err(|e| e.to_string())?;
    let mut stdin = cat.stdin().unwrap();
    let mut stdout = cat.stdout().unwrap();
    // Each line comes back while stdin stays open.
    for line in [&b"one\n"[..], b"two\n"] {
        stdin.write_all(line).await.map_err(|e| e.to_string())?;
        stdin.flush().await.map_err(|e| e.to_string())?;
        if read_exactly(&mut stdout, line.len()).await? != line {
            return Err("a line came back changed".into());
        }
    }
    let every_byte: Vec<u8> = (0..=255).collect();
    stdin
        .write_all(&every_byte)
        .await
        .map_err(|e| e.to_string())?;
    if read_exactly(&mut stdout, 256).await? != every_byte {
        return Err("the 256 byte values came back changed".into());
    }
    // 8 MiB each way, written and read at the same time.
    let big: Vec<u8> = (0..8u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let sent = big.clone();
    let writer = tokio::spawn(async move {
        stdin.write_all(&sent).await?;
        stdin.shutdown().await
    });
    let mut back = Vec::new();
    tokio::time::timeout(Duration::from_secs(120), stdout.read_to_end(&mut back))
        .await
        .map_err(|_| "8 MiB through cat timed out")?
        .map_err(|e| e.to_string())?;
    writer
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
    if back.len() != big.len() || back != big {
        return Err(format!(
            "8 MiB through cat came back as {} different bytes",
            back.len()
        ));
    }
    let status = cat.take_status().unwrap().await.ok_or("no status")?;
    if status.status.as_deref() != Some("Success") {
        return Err(format!("cat gave {status:?}"));
    }
    server.shutdown().await;
    Ok(())
}

async fn open_streams_reach(server: &KubeTestServer, count: usize) -> R {
    for _ in 0..200 {
        if server.open_exec_streams() == count {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    Err(format!(
        "{} exec streams open, not {count}",
        server.open_exec_streams()
    ))
}

async fn exec_client_gone_ends_stream() -> R {
    let (server, pods) = setup().await?;
    running(&pods, "gone").await?;
    let long = pods
        .exec("gone", ["sleep", "600"], &AttachParams::default())
        .await
        .map_err(|e| e.to_string())?;
    open_streams_reach(&server, 1).await?;
    drop(long);
    open_streams_reach(&server, 0).await?;
    server.shutdown().await;
    Ok(())
}

async fn exec_streams_dropped_commands_keep_running() -> R {
    let (server, pods) = setup().await?;
    running(&pods, "cut").await?;
    let mut sleeper = pods
        .exec("cut", ["sleep", "30"], &AttachParams::default())
        .await
        .map_err(|e| e.to_string())?;
    open_streams_reach(&server, 1).await?;
    // The stream is open once upgraded; the command starts a moment later.
    // Cut it only once the command runs, which is what this test is about.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !running_commands(&pods, "cut").await?.contains("sleep 30") {
        if std::time::Instant::now() > deadline {
            return Err("sleep 30 did not start".into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    server.drop_exec_streams();
    let status = tokio::time::timeout(Duration::from_secs(10), sleeper.take_status().unwrap())
        .await
        .map_err(|_| "the cut exec stream stayed open")?;
    if let Some(status) = status {
        return Err(format!("the cut exec stream gave a status: {status:?}"));
    }
    open_streams_reach(&server, 0).await?;
    if phase(&pods.get("cut").await.map_err(|e| e.to_string())?) != "Running" {
        return Err("the pod stopped running".into());
    }
    let out = running_commands(&pods, "cut").await?;
    if !out.lines().any(|l| l.trim() == "sleep 30") {
        return Err(format!("sleep 30 is no longer running: {out:?}"));
    }
    server.shutdown().await;
    Ok(())
}

/// `ps -o args` in pod `name` through a new exec, which must succeed.
async fn running_commands(pods: &Api<Pod>, name: &str) -> Result<String, String> {
    let mut ps = pods
        .exec(
            name,
            ["ps", "-o", "args"],
            &AttachParams::default().stderr(false),
        )
        .await
        .map_err(|e| e.to_string())?;
    let mut out = String::new();
    ps.stdout()
        .unwrap()
        .read_to_string(&mut out)
        .await
        .map_err(|e| e.to_string())?;
    let status = ps.take_status().unwrap().await.ok_or("no status for ps")?;
    if status.status.as_deref() != Some("Success") {
        return Err(format!("ps gave {status:?}"));
    }
    Ok(out)
}

async fn faults_image_schedule_restart() -> R {
    let (server, pods) = setup().await?;
    pods.create(
        &PostParams::default(),
        &pod("nope", "runners-test-absent:1", serde_json::json!({})),
    )
    .await
    .map_err(|e| e.to_string())?;
    wait_for(&pods, "nope", |p| {
        let waiting = p
            .status
            .as_ref()
            .and_then(|s| s.container_statuses.as_ref())
            .and_then(|c| c[0].state.as_ref())
            .and_then(|s| s.waiting.clone());
        waiting.is_some_and(|w| {
            w.reason.as_deref() == Some("ImagePullBackOff")
                && w.message
                    .unwrap_or_default()
                    .contains("runners-test-absent:1")
        })
    })
    .await?;
    pods.create(
        &PostParams::default(),
        &pod(
            "nosched",
            &image(),
            serde_json::json!({"nodeSelector": {"gpu": "yes"}}),
        ),
    )
    .await
    .map_err(|e| e.to_string())?;
    wait_for(&pods, "nosched", |p| {
        p.status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|c| {
                c.iter().any(|c| {
                    c.type_ == "PodScheduled"
                        && c.status == "False"
                        && c.reason.as_deref() == Some("Unschedulable")
                })
            })
    })
    .await?;
    running(&pods, "kept").await?;
    server.stop().await;
    if pods.get("kept").await.is_ok() {
        return Err("the stopped server answered".into());
    }
    server.start_again().await.map_err(|e| e.to_string())?;
    let mut kept = None;
    for _ in 0..20 {
        if let Ok(p) = pods.get("kept").await {
            kept = Some(p);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if kept.as_ref().map(phase) != Some("Running") {
        return Err("the pod did not survive the restart".into());
    }
    server.shutdown().await;
    Ok(())
}

async fn lease_replace_conflict() -> R {
    let (server, pods) = setup().await?;
    let leases: Api<Lease> = Api::namespaced(pods.into_client(), server.namespace());
    let lease: Lease = serde_json::from_value(
        serde_json::json!({"metadata": {"name": "owner"}, "spec": {"holderIdentity": "a"}}),
    )
    .unwrap();
    let created = leases
        .create(&PostParams::default(), &lease)
        .await
        .map_err(|e| e.to_string())?;
    let mut next = created.clone();
    next.spec.get_or_insert_default().holder_identity = Some("b".into());
    leases
        .replace("owner", &PostParams::default(), &next)
        .await
        .map_err(|e| e.to_string())?;
    if leases
        .replace("owner", &PostParams::default(), &created)
        .await
        .map_err(api_code)
        .err()
        != Some(409)
    {
        return Err("a stale lease replace was not 409".into());
    }
    leases
        .delete("owner", &DeleteParams::default())
        .await
        .map_err(|e| e.to_string())?;
    server.shutdown().await;
    Ok(())
}

fn claim(name: &str, spec: serde_json::Value) -> PersistentVolumeClaim {
    serde_json::from_value(serde_json::json!({
        "metadata": {"name": name, "labels": {"app": "c"}}, "spec": spec
    }))
    .unwrap()
}

fn claim_spec() -> serde_json::Value {
    serde_json::json!({"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}})
}

/// A pod that mounts claim `claim_name` at /data.
fn pod_with_claim(name: &str, claim_name: &str) -> Pod {
    pod(
        name,
        &image(),
        serde_json::json!({
            "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": claim_name}}],
            "containers": [{"name": "main", "image": image(), "command": ["sleep", "600"],
                            "volumeMounts": [{"name": "data", "mountPath": "/data"}]}]
        }),
    )
}

async fn exec_output(pods: &Api<Pod>, name: &str, command: &[&str]) -> Result<String, String> {
    let mut process = pods
        .exec(
            name,
            command.to_vec(),
            &AttachParams::default().stderr(false),
        )
        .await
        .map_err(|e| e.to_string())?;
    let mut out = String::new();
    process
        .stdout()
        .unwrap()
        .read_to_string(&mut out)
        .await
        .map_err(|e| e.to_string())?;
    let status = process.take_status().unwrap().await.ok_or("no status")?;
    if status.status.as_deref() != Some("Success") {
        return Err(format!("{command:?} gave {status:?}"));
    }
    Ok(out)
}

async fn claims_refused_422_409() -> R {
    let (server, pods) = setup().await?;
    let claims: Api<PersistentVolumeClaim> =
        Api::namespaced(pods.into_client(), server.namespace());
    let unnamed: PersistentVolumeClaim =
        serde_json::from_value(serde_json::json!({"metadata": {}, "spec": claim_spec()})).unwrap();
    let no_storage = claim("c1", serde_json::json!({"accessModes": ["ReadWriteOnce"]}));
    let no_modes = claim(
        "c1",
        serde_json::json!({"resources": {"requests": {"storage": "1Gi"}}}),
    );
    for (refused, field) in [
        (unnamed, "metadata.name"),
        (no_storage, "spec.resources[storage]"),
        (no_modes, "spec.accessModes"),
    ] {
        match claims.create(&PostParams::default(), &refused).await {
            Err(kube::Error::Api(s)) if s.code == 422 && s.message.contains(field) => {}
            other => return Err(format!("expected 422 naming {field}, got {other:?}")),
        }
    }
    claims
        .create(&PostParams::default(), &claim("c1", claim_spec()))
        .await
        .map_err(|e| e.to_string())?;
    let again = claims
        .create(&PostParams::default(), &claim("c1", claim_spec()))
        .await;
    if again.map_err(api_code).err() != Some(409) {
        return Err("a second claim create was not 409".into());
    }
    server.shutdown().await;
    Ok(())
}

async fn claims_bound_mounted_kept_until_unused() -> R {
    let (server, pods) = setup().await?;
    let claims: Api<PersistentVolumeClaim> =
        Api::namespaced(pods.clone().into_client(), server.namespace());
    let rv = claims
        .list(&ListParams::default())
        .await
        .map_err(|e| e.to_string())?
        .metadata
        .resource_version
        .unwrap_or_default();
    let mut events = claims
        .watch(&WatchParams::default().labels("app=c"), &rv)
        .await
        .map_err(|e| e.to_string())?
        .boxed();
    let created = claims
        .create(&PostParams::default(), &claim("data", claim_spec()))
        .await
        .map_err(|e| e.to_string())?;
    let bound = |c: &PersistentVolumeClaim| {
        c.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Bound")
    };
    if !bound(&created) || !bound(&claims.get("data").await.map_err(|e| e.to_string())?) {
        return Err(format!("the claim is not Bound: {:?}", created.status));
    }
    match tokio::time::timeout(Duration::from_secs(10), events.try_next()).await {
        Ok(Ok(Some(WatchEvent::Added(c)))) if c.metadata.name.as_deref() == Some("data") => {}
        other => return Err(format!("expected the claim's ADDED event, got {other:?}")),
    }
    for (selector, count) in [("app=c", 1), ("app!=c", 0)] {
        let listed = claims
            .list(&ListParams::default().labels(selector))
            .await
            .map_err(|e| e.to_string())?;
        if listed.items.len() != count {
            return Err(format!("{selector} listed {} claims", listed.items.len()));
        }
    }
    // Data written through the claim outlives the pod that wrote it.
    pods.create(&PostParams::default(), &pod_with_claim("writer", "data"))
        .await
        .map_err(|e| e.to_string())?;
    wait_for(&pods, "writer", |p| phase(p) == "Running").await?;
    exec_output(&pods, "writer", &["sh", "-c", "echo kept > /data/file"]).await?;
    let quick = DeleteParams {
        grace_period_seconds: Some(0),
        ..Default::default()
    };
    pods.delete("writer", &quick)
        .await
        .map_err(|e| e.to_string())?;
    pods.create(&PostParams::default(), &pod_with_claim("reader", "data"))
        .await
        .map_err(|e| e.to_string())?;
    wait_for(&pods, "reader", |p| phase(p) == "Running").await?;
    let read = exec_output(&pods, "reader", &["cat", "/data/file"]).await?;
    if read != "kept\n" {
        return Err(format!("the new pod read {read:?} from the claim"));
    }
    // A claim in use is kept (pvc-protection) until its pod is gone.
    claims
        .delete("data", &DeleteParams::default())
        .await
        .map_err(|e| e.to_string())?;
    let kept = claims.get("data").await.map_err(|e| e.to_string())?;
    let protected = kept
        .metadata
        .finalizers
        .unwrap_or_default()
        .contains(&"kubernetes.io/pvc-protection".to_string());
    if kept.metadata.deletion_timestamp.is_none() || !protected {
        return Err("the claim in use was not kept under pvc-protection".into());
    }
    let uid = created.metadata.uid.clone().unwrap_or_default();
    let host_dir = server
        .kubeconfig_path()
        .parent()
        .unwrap()
        .join("claims")
        .join(&uid);
    if !host_dir.join("file").exists() {
        return Err(format!("{} holds no file", host_dir.display()));
    }
    pods.delete("reader", &quick)
        .await
        .map_err(|e| e.to_string())?;
    if claims.get("data").await.map_err(api_code).err() != Some(404) {
        return Err("the claim is still there after its pod went".into());
    }
    if host_dir.exists() {
        return Err(format!("{} is still there", host_dir.display()));
    }
    loop {
        match tokio::time::timeout(Duration::from_secs(10), events.try_next()).await {
            Ok(Ok(Some(WatchEvent::Deleted(c)))) if c.metadata.name.as_deref() == Some("data") => {
                break;
            }
            Ok(Ok(Some(_))) => {}
            other => return Err(format!("expected the claim's DELETED event, got {other:?}")),
        }
    }
    server.shutdown().await;
    Ok(())
}

async fn claims_missing_leaves_pod_unschedulable() -> R {
    let (server, pods) = setup().await?;
    let claims: Api<PersistentVolumeClaim> =
        Api::namespaced(pods.clone().into_client(), server.namespace());
    pods.create(&PostParams::default(), &pod_with_claim("waiting", "ghost"))
        .await
        .map_err(|e| e.to_string())?;
    let pending = wait_for(&pods, "waiting", |p| {
        p.status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|c| {
                c.iter().any(|c| {
                    c.type_ == "PodScheduled"
                        && c.status == "False"
                        && c.reason.as_deref() == Some("Unschedulable")
                        && c.message
                            .as_deref()
                            .unwrap_or("")
                            .contains("persistentvolumeclaim \"ghost\" not found")
                })
            })
    })
    .await?;
    if phase(&pending) != "Pending" {
        return Err(format!("the pod is {} without its claim", phase(&pending)));
    }
    // The scheduler retries: once the claim exists the pod runs.
    claims
        .create(&PostParams::default(), &claim("ghost", claim_spec()))
        .await
        .map_err(|e| e.to_string())?;
    wait_for(&pods, "waiting", |p| phase(p) == "Running").await?;
    server.shutdown().await;
    Ok(())
}

fn main() -> ExitCode {
    // The workspace compiles rustls with both ring and aws-lc-rs (through
    // other crates), so kube's client cannot pick one: this test picks ring.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let gate = BackendGate::new(
        "RUNNER_TEST_DOCKER",
        "scripts/test.sh starts dockerd and builds the test image",
    );
    gate.run(vec![
        async_trial(
            "pods_create_list_watch_delete",
            lifecycle_create_list_watch_delete,
        ),
        async_trial("pods_refused_422_409_403", refusals_422_409_403),
        async_trial("exec_output_status_and_stdin", exec_output_status_and_stdin),
        async_trial("exec_cat_streams_both_ways", exec_cat_streams_both_ways),
        async_trial("exec_client_gone_ends_stream", exec_client_gone_ends_stream),
        async_trial(
            "exec_streams_dropped_commands_keep_running",
            exec_streams_dropped_commands_keep_running,
        ),
        async_trial(
            "faults_image_schedule_restart",
            faults_image_schedule_restart,
        ),
        async_trial("leases_replace_conflict", lease_replace_conflict),
        async_trial("claims_refused_422_409", claims_refused_422_409),
        async_trial(
            "claims_bound_mounted_kept_until_unused",
            claims_bound_mounted_kept_until_unused,
        ),
        async_trial(
            "claims_missing_leaves_pod_unschedulable",
            claims_missing_leaves_pod_unschedulable,
        ),
    ])
}

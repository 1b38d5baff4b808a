"""Domain operations against raw table calls, one JSON line of ratios: for comparing checkouts.

    cd <checkout> && /path/to/.venv/bin/python /path/to/bench/domain_ops.py [operations]

Runs in whatever checkout is the working directory (it imports ``shared`` from there, the
flat modules of older commits included), so the same script measures two commits: run it
alternately in both, several rounds, and compare medians and ranges (docs/performance.md,
issue 9 section, was made this way with 5 rounds of 800 operations). Every figure is a ratio
against raw table calls made in the same process, so machine load largely cancels.
"""
import json, sys, tempfile, time, uuid, importlib
sys.path.insert(0, ".")
from pathlib import Path
from shared.config import Settings
from shared.stores import Stores
from shared.backends import Entity, TableOp
def imp(new, old):
    try: return importlib.import_module(new)
    except ImportError: return importlib.import_module(old)
Mem = imp("shared.domains.memory.service", "shared.memory").MemoryService
Ses = imp("shared.domains.sessions.service", "shared.sessions").SessionService
Wf = imp("shared.domains.workflows.service", "shared.workflows").WorkflowService
stores = Stores.from_settings(Settings(backend="local", data_dir=Path(tempfile.mkdtemp()))); stores.ensure()
raw = stores.backend.table("benchraw"); stores.backend.ensure(tables=["benchraw"])
def rate(n, f):
    t=time.perf_counter()
    for i in range(n): f(i)
    return n/(time.perf_counter()-t)
N=int(sys.argv[1]) if len(sys.argv)>1 else 1500
t="bench"+uuid.uuid4().hex[:6]
TEXT = "A typical chat message of a few sentences, about the length people type. " * 3
row = {"role": "user", "text": TEXT, "seq": 1, "created_at": time.time()}
raw.insert(Entity("head","thread",{"message_count":0}))
out={}
prim = rate(N, lambda i: raw.batch([TableOp.update(Entity("head","thread",{"message_count":i}), if_match=raw.get("head","thread").etag), TableOp.insert(Entity("head", f"m{i:08d}", row))]))
mem=Mem(stores); th=mem.create_thread(t,"res").thread_id
out["memory add_message / (get+batch)"] = rate(N, lambda i: mem.add_message(t, th, "user", TEXT))/prim
raw.upsert(Entity("p","r",{"a":1}))
get = rate(N, lambda i: raw.get("p","r"))
ses=Ses(stores); sid=ses.create(t,"user").session_id
sget = rate(N, lambda i: ses.get(t,sid))
out["sessions get / raw get"] = sget/get
out["sessions record / sessions get"] = rate(N, lambda i: ses.record(t,sid,processing_time=0.01))/sget
out["sessions record idem / sessions get"] = rate(N, lambda i: ses.record(t,sid,idempotency_key=f"k{i}-{uuid.uuid4().hex}"))/sget
wf=Wf(stores)
ctx={"cursor": 17, "messages": ["a short message " * 8] * 4}
raw.upsert(Entity("p","w",{"status":"running","context":str(ctx)}))
def base(_):
    for s in ("suspended","running"):
        e=raw.get("p","w"); raw.upsert(Entity("p","w",{**e.properties,"status":s}))
b=rate(N//2, base)
wf.suspend(t,"small",workflow_name="bench",resource="user:1",current_step="s",context_state=ctx,reason={"kind":"manual"}); wf.resume(t,"small")
def rt(_):
    wf.suspend(t,"small",workflow_name="bench",resource="user:1",current_step="s",context_state=ctx,reason={"kind":"event","event_id":"go","timeout_seconds":3600}); wf.resume(t,"small")
out["workflows suspend+resume / baseline"] = rate(N//2, rt)/b
M=N//2
out["workflows suspend new / baseline"] = rate(M, lambda i: wf.suspend(t, f"new{i:06d}", workflow_name="bench", resource="user:2", current_step="s", context_state=ctx, reason={"kind":"event","event_id":"data_ready","timeout_seconds":60}))/b
s=time.perf_counter(); d=wf.deliver_event(t,"data_ready",{"rows":1}); out["workflows event delivery / baseline"]=d/(time.perf_counter()-s)/b
for i in range(M): wf.suspend(t, f"due{i:06d}", workflow_name="bench", resource="user:3", current_step="s", context_state={}, reason={"kind":"event","event_id":"never","timeout_seconds":60})
s=time.perf_counter(); done=0
while True:
    c=wf.process_due(now=time.time()+120, limit=500)
    if not c or not any(c.values()): break
    done+=c["timed_out"]
out["workflows timeouts / baseline"]=done/(time.perf_counter()-s)/b
out["_timeouts"]=done
out["_mod"]=Mem.__module__
print(json.dumps(out))

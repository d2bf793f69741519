"""Runs the pipeline on real engines for the engine tests, inside a private network namespace.

    python tests/engines/engine_harness.py ENGINE OUTPUT [pipeline options...]

ENGINE is `direct` (DirectRunner, the reference), `flink` (a standalone Flink cluster: JobManager
and TaskManager as separate JVMs, Beam's Flink job server, SDK workers from an EXTERNAL worker
pool, the pipeline submitted with PortableRunner), `prism` (PrismRunner with the Prism binary
built from Beam's Go module) or `dataflow` (DataflowRunner with --dry_run: translated, never
submitted). The engines come from `make engines` (engines/fetch.sh), in the cache folder.

Beam's gRPC servers and Flink's bind every interface, so the harness runs only under
`private_network_command`: in a network namespace of its own with just the loopback interface
up, where 127.0.0.1 is the only address and nothing leaves the machine. The ports inside it are
fixed: no other process shares the namespace.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import typing
import urllib.request

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
VERSIONS_FILE = os.path.join(REPO, "engines", "versions.env")
LOOPBACK = "127.0.0.1"
PR_SET_PDEATHSIG = 1  # prctl option: the signal a process gets when its parent exits

# Fixed ports: the namespace is private, so nothing else can hold them.
FLINK_RPC_PORT = 6123
FLINK_REST_PORT = 8081
JOB_PORT = 8099
ARTIFACT_PORT = 8098
EXPANSION_PORT = 8097
WORKER_POOL_PORT = 50000

# Flink's own JVM options for Java 17 (what its distribution's config.yaml sets in
# env.java.opts.all, which the start scripts pass on).
FLINK_JAVA_OPTS = [
    "--add-exports=java.base/sun.net.util=ALL-UNNAMED",
    "--add-exports=java.rmi/sun.rmi.registry=ALL-UNNAMED",
    "--add-exports=java.security.jgss/sun.security.krb5=ALL-UNNAMED",
    *(f"--add-opens=java.base/{package}=ALL-UNNAMED" for package in (
        "java.lang", "java.net", "java.io", "java.nio", "sun.nio.ch", "java.lang.reflect",
        "java.text", "java.time", "java.util", "java.util.concurrent",
        "java.util.concurrent.atomic", "java.util.concurrent.locks")),
]

LOG4J_PROPERTIES = """\
rootLogger.level = INFO
rootLogger.appenderRef.file.ref = FileAppender
appender.file.name = FileAppender
appender.file.type = File
appender.file.fileName = ${sys:log.file}
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = %d{HH:mm:ss,SSS} %-5p %c{1} - %m%n
"""


def versions() -> dict[str, str]:
  """engines/versions.env as a dict."""
  values = {}
  with open(VERSIONS_FILE, encoding="utf-8") as f:
    for line in f:
      line = line.strip()
      if line and not line.startswith("#"):
        key, _, value = line.partition("=")
        values[key.strip()] = value.strip()
  return values


def engines_cache() -> str:
  """The folder engines/fetch.sh fills (under $SAFETY_PRETRAINING_CACHE)."""
  root = os.environ.get("SAFETY_PRETRAINING_CACHE") or os.path.join(
      os.path.expanduser("~"), ".cache", "safety-pretraining")
  return os.path.join(root, "engines")


def _fetched(folder: str) -> str:
  path = os.path.join(engines_cache(), folder)
  if not os.path.exists(os.path.join(path, ".complete")):
    raise FileNotFoundError(f"{path} is missing: run `make engines` (engines/fetch.sh) first")
  return path


def flink_lib() -> str:
  return os.path.join(_fetched(f"flink-{versions()['FLINK_VERSION']}"), "lib")


def flink_job_server_jar() -> str:
  v = versions()
  folder = f"beam-flink-job-server-{v['BEAM_FLINK_RUNNER_VERSION']}-flink-{v['FLINK_MINOR']}"
  return os.path.join(_fetched(folder), "job-server.jar")


def prism_binary() -> str:
  return os.path.join(_fetched(f"prism-{versions()['PRISM_VERSION']}"), "prism")


def private_network_command(command: typing.Sequence[str]) -> list[str]:
  """`command` in a new network namespace whose only interface, loopback, is up."""
  return ["unshare", "--net", "sh", "-c", 'ip link set lo up && exec "$@"', "sh", *command]


def child_environment() -> dict[str, str]:
  """The environment of every process the harness starts: the repo importable, quiet threads.

  The virtual environment's bin folder comes first on PATH: Beam's worker pool starts each SDK
  worker as `python`.
  """
  env = dict(os.environ)
  env["PATH"] = os.pathsep.join([os.path.dirname(sys.executable), env.get("PATH", "")])
  env["PYTHONPATH"] = os.pathsep.join(filter(None, [REPO, env.get("PYTHONPATH")]))
  env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
  env.setdefault("HF_HUB_OFFLINE", "1")
  env.setdefault("TRANSFORMERS_OFFLINE", "1")
  return env


def _die_with_parent() -> None:
  """Run in a child before exec: the kernel kills it when the harness dies, however it dies."""
  libc = ctypes.CDLL(None, use_errno=True)
  libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


class Service:
  """A started process with its log file; stopped (and its log shown on failure) on exit."""

  def __init__(self, name: str, command: typing.Sequence[str], log_dir: str, **popen_kwargs):
    self.name = name
    self.log_path = os.path.join(log_dir, f"{name}.log")
    self._log = open(self.log_path, "wb")  # pylint: disable=consider-using-with
    self.process = subprocess.Popen(  # pylint: disable=consider-using-with
        list(command), stdout=self._log, stderr=subprocess.STDOUT, env=child_environment(),
        preexec_fn=_die_with_parent, **popen_kwargs)

  def check_alive(self) -> None:
    if self.process.poll() is not None:
      raise RuntimeError(
          f"{self.name} exited with {self.process.returncode}:\n{self.log_tail()}")

  def log_tail(self, chars: int = 6000) -> str:
    with open(self.log_path, "rb") as f:
      return f.read().decode("utf-8", "replace")[-chars:]

  def stop(self) -> None:
    if self.process.poll() is None:
      self.process.terminate()
      try:
        self.process.wait(timeout=20)
      except subprocess.TimeoutExpired:
        self.process.kill()
        self.process.wait()
    self._log.close()


def wait_until(ready: typing.Callable[[], bool], what: str, services: typing.Sequence[Service],
               timeout: float = 180.0) -> None:
  """Polls `ready` until it holds; fails early when one of `services` has exited."""
  deadline = time.monotonic() + timeout
  while time.monotonic() < deadline:
    for service in services:
      service.check_alive()
    if ready():
      return
    time.sleep(0.5)
  tails = "\n".join(f"--- {s.name}:\n{s.log_tail()}" for s in services)
  raise TimeoutError(f"{what} not ready after {timeout:.0f}s\n{tails}")


def port_open(port: int) -> bool:
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
    sock.settimeout(1.0)
    return sock.connect_ex((LOOPBACK, port)) == 0


def flink_rest(path: str) -> typing.Any:
  with urllib.request.urlopen(f"http://{LOOPBACK}:{FLINK_REST_PORT}{path}", timeout=5) as reply:
    return json.load(reply)


def _flink_has_slots(slots: int) -> bool:
  try:
    return flink_rest("/overview")["slots-total"] >= slots
  except OSError:
    return False


def write_flink_conf(conf_dir: str, slots: int) -> None:
  """A Flink configuration for one JobManager and one TaskManager on 127.0.0.1."""
  os.makedirs(conf_dir, exist_ok=True)
  settings = {
      "jobmanager.rpc.address": LOOPBACK,
      "jobmanager.rpc.port": FLINK_RPC_PORT,
      "jobmanager.bind-host": LOOPBACK,
      "jobmanager.memory.process.size": "1024m",
      "rest.address": LOOPBACK,
      "rest.bind-address": LOOPBACK,
      "rest.port": FLINK_REST_PORT,
      "taskmanager.host": LOOPBACK,
      "taskmanager.bind-host": LOOPBACK,
      "taskmanager.numberOfTaskSlots": slots,
      "taskmanager.memory.process.size": "2048m",
      # The graph's statistics and its commit step add many blocking exchanges, and Flink's
      # sort-merge shuffle claims 512 network buffers for each result partition ("Insufficient
      # number of network buffers" at the default network share). At this parallelism the
      # hash-based blocking shuffle needs a few buffers a channel instead.
      "taskmanager.network.sort-shuffle.min-parallelism": 1024,
      "parallelism.default": slots,
      # Batch jobs: no restarts hiding a failure, no checkpoints.
      "restart-strategy.type": "none",
  }
  with open(os.path.join(conf_dir, "config.yaml"), "w", encoding="utf-8") as f:
    for key, value in settings.items():
      f.write(f"{key}: {value}\n")
  with open(os.path.join(conf_dir, "log4j.properties"), "w", encoding="utf-8") as f:
    f.write(LOG4J_PROPERTIES)


def _flink_resource_params(role: str, conf_dir: str) -> tuple[list[str], list[str]]:
  """(JVM memory options, `-D key=value` settings) of a JobManager or TaskManager process.

  What Flink's jobmanager.sh and taskmanager.sh ask BashJavaUtils for before they start the JVM:
  the memory model's sizes, derived from the configured process size.
  """
  command = "GET_JM_RESOURCE_PARAMS" if role == "jobmanager" else "GET_TM_RESOURCE_PARAMS"
  output = subprocess.run(
      ["java", "-cp", os.path.join(flink_lib(), "*"),
       "org.apache.flink.runtime.util.bash.BashJavaUtils", command, "--configDir", conf_dir],
      capture_output=True, text=True, check=True, env=child_environment()).stdout
  marker = "BASH_JAVA_UTILS_EXEC_RESULT:"
  results = [line[len(marker):] for line in output.splitlines() if line.startswith(marker)]
  if len(results) != 2:
    raise RuntimeError(f"BashJavaUtils {command} gave no resource settings:\n{output}")
  return results[0].split(), results[1].split()


def _flink_jvm(role: str, main_class: str, conf_dir: str, log_dir: str) -> list[str]:
  """The command line of a Flink cluster process, as Flink's start scripts build it."""
  jvm_memory, settings = _flink_resource_params(role, conf_dir)
  return [
      "java", *jvm_memory, *FLINK_JAVA_OPTS,
      f"-Dlog.file={os.path.join(log_dir, f'flink-{role}.log')}",
      f"-Dlog4j.configurationFile={os.path.join(conf_dir, 'log4j.properties')}",
      "-cp", os.path.join(flink_lib(), "*"), main_class, "--configDir", conf_dir, *settings]


@contextlib.contextmanager
def services_stopped_on_exit():
  services: list[Service] = []
  try:
    yield services
  finally:
    for service in reversed(services):
      service.stop()


# How a child process runs the pipeline: as users do (run.py), or the bare graph (no run.py).
ENTRY = ("-m", "beam_pipeline.run")
BUILD_ONLY = (os.path.join(os.path.dirname(os.path.abspath(__file__)), "build_only.py"),)


def run_pipeline(pipeline_args: typing.Sequence[str], log_dir: str, name: str,
                 timeout: float = 3000.0, program: typing.Sequence[str] = ENTRY) -> None:
  """`python -m beam_pipeline.run` (or `program`) with `pipeline_args` in a child process;
  fails on non-zero."""
  log_path = os.path.join(log_dir, f"{name}.log")
  started = time.monotonic()
  with open(log_path, "wb") as log:
    code = subprocess.run(
        [sys.executable, *program, *pipeline_args], cwd=REPO, stdout=log,
        stderr=subprocess.STDOUT, env=child_environment(), timeout=timeout,
        preexec_fn=_die_with_parent, check=False).returncode
  if code != 0:
    with open(log_path, "rb") as f:
      tail = f.read().decode("utf-8", "replace")[-8000:]
    raise RuntimeError(f"pipeline on {name} exited with {code}:\n{tail}")
  # The pipeline's own time, without the cluster's start (benchmarks/pipeline_throughput.py).
  with open(os.path.join(log_dir, f"{name}.seconds"), "w", encoding="utf-8") as f:
    f.write(f"{time.monotonic() - started:.3f}\n")


@contextlib.contextmanager
def prism_fetches_recorded():
  """Records (and refuses) every attempt of Beam's Prism runner to download or build Prism, and
  every Prism binary it starts. Yields {"downloads": [...], "builds": [...], "binaries": [...]}."""
  from apache_beam.runners.portability import prism_runner
  server = prism_runner.PrismJobServer
  record = {"downloads": [], "builds": [], "binaries": []}
  saved = (server.__dict__["_download_to_local_path"], server.__dict__["_install_from_source"],
           server._get_executable_path, prism_runner.urlopen)  # pylint: disable=protected-access
  original_download = saved[0].__func__

  def download(url, bin_cache="", ignore_cache=False):
    if not os.path.exists(url):
      record["downloads"].append(url)
      raise RuntimeError(f"Prism download attempted: {url}")
    return original_download(url, bin_cache, ignore_cache)

  def install_from_source(version):
    record["builds"].append(version)
    raise RuntimeError(f"Prism build from source attempted: {version}")

  def executable_path(self):
    path = saved[2](self)
    record["binaries"].append(path)
    return path

  def urlopen(url, *args, **kwargs):
    record["downloads"].append(str(url))
    raise RuntimeError(f"Prism download attempted: {url}")

  server._download_to_local_path = staticmethod(download)  # pylint: disable=protected-access
  server._install_from_source = staticmethod(install_from_source)  # pylint: disable=protected-access
  server._get_executable_path = executable_path  # pylint: disable=protected-access
  prism_runner.urlopen = urlopen
  try:
    yield record
  finally:
    server._download_to_local_path = saved[0]  # pylint: disable=protected-access
    server._install_from_source = saved[1]  # pylint: disable=protected-access
    server._get_executable_path = saved[2]  # pylint: disable=protected-access
    prism_runner.urlopen = saved[3]


def run_direct(output: str, args: typing.Sequence[str], log_dir: str) -> None:
  """The pipeline's default runner, in this process, with Prism fetches recorded in
  `log_dir`/prism_fetches.json."""
  from beam_pipeline import run as entry
  with prism_fetches_recorded() as record:
    report = entry.run(["--runner=DirectRunner", f"--output={output}", *args])
  with open(os.path.join(log_dir, "prism_fetches.json"), "w", encoding="utf-8") as f:
    json.dump(record, f)
  if not report["checks_hold"]:
    raise RuntimeError(f"DirectRunner run's checks failed: {json.dumps(report['checks'])}")


def run_direct_switch(output: str, args: typing.Sequence[str], log_dir: str,
                      as_launched: bool = True) -> None:
  """A pipeline that DirectRunner hands to Prism (nothing in it that Prism lacks), launched as
  the pipeline's entry launches (or, `as_launched` False, with Beam's plain options): writes
  `output`/switch.json with its result, the Prism fetches attempted and the binaries started."""
  import apache_beam as beam
  from apache_beam.options.pipeline_options import PipelineOptions

  from beam_pipeline import launch

  del log_dir
  argv = ["--runner=DirectRunner", *args]
  options = launch.prepare(argv) if as_launched else PipelineOptions(argv)
  runner = launch.runner_for(options) if as_launched else None
  os.makedirs(output, exist_ok=True)
  with prism_fetches_recorded() as record:
    with beam.Pipeline(runner=runner, options=options) as pipeline:
      _ = (pipeline | beam.Create([1, 2, 3, 4]) | beam.Map(lambda x: x * x)
           | beam.CombineGlobally(sum) | beam.Map(str)
           | beam.io.WriteToText(os.path.join(output, "sum"), shard_name_template=""))
  with open(os.path.join(output, "sum"), encoding="utf-8") as f:
    record["result"] = f.read().strip()
  with open(os.path.join(output, "switch.json"), "w", encoding="utf-8") as f:
    json.dump(record, f)


def run_flink(output: str, args: typing.Sequence[str], log_dir: str, parallelism: int = 2,
              program: typing.Sequence[str] = ENTRY) -> None:
  """A standalone Flink cluster, Beam's Flink job server and an SDK worker pool; then the run."""
  conf_dir = os.path.join(log_dir, "flink-conf")
  write_flink_conf(conf_dir, slots=parallelism)
  with services_stopped_on_exit() as services:
    services.append(Service("flink-jobmanager", _flink_jvm(
        "jobmanager", "org.apache.flink.runtime.entrypoint.StandaloneSessionClusterEntrypoint",
        conf_dir, log_dir), log_dir))
    services.append(Service("flink-taskmanager", _flink_jvm(
        "taskmanager", "org.apache.flink.runtime.taskexecutor.TaskManagerRunner",
        conf_dir, log_dir), log_dir))
    services.append(Service("beam-flink-job-server", [
        "java", "-jar", flink_job_server_jar(),
        "--flink-master", f"{LOOPBACK}:{FLINK_REST_PORT}", "--job-host", LOOPBACK,
        "--job-port", str(JOB_PORT), "--artifact-port", str(ARTIFACT_PORT),
        "--expansion-port", str(EXPANSION_PORT),
        "--artifacts-dir", os.path.join(log_dir, "artifacts")], log_dir))
    # The SDK harnesses: started by the pool, one process per worker the runner asks for.
    services.append(Service("sdk-worker-pool", [
        sys.executable, "-m", "apache_beam.runners.worker.worker_pool_main",
        f"--service_port={WORKER_POOL_PORT}"], log_dir, cwd=REPO))
    wait_until(lambda: _flink_has_slots(parallelism), "Flink cluster", services)
    wait_until(lambda: port_open(JOB_PORT), "Flink job server", services)
    wait_until(lambda: port_open(WORKER_POOL_PORT), "SDK worker pool", services)
    run_pipeline([
        "--runner=PortableRunner", f"--job_endpoint={LOOPBACK}:{JOB_PORT}",
        "--environment_type=EXTERNAL", f"--environment_config={LOOPBACK}:{WORKER_POOL_PORT}",
        f"--parallelism={parallelism}", f"--output={output}", *args], log_dir, "flink",
        program=program)
    jobs = flink_rest("/jobs/overview")["jobs"]
    if not jobs or any(job["state"] != "FINISHED" for job in jobs):
      raise RuntimeError(f"Flink jobs not all finished: {jobs}")
    with open(os.path.join(log_dir, "flink-jobs.json"), "w", encoding="utf-8") as f:
      json.dump(jobs, f, indent=2)


def run_prism(output: str, args: typing.Sequence[str], log_dir: str,
              program: typing.Sequence[str] = ENTRY) -> None:
  run_pipeline([
      "--runner=PrismRunner", f"--prism_location={prism_binary()}",
      "--environment_type=LOOPBACK", f"--output={output}", *args], log_dir, "prism",
      program=program)


def translate_for_dataflow(output: str, args: typing.Sequence[str], log_dir: str) -> None:
  """Translates the pipeline with DataflowRunner --dry_run (nothing is staged or submitted) and
  writes what Dataflow would get to `output`/dataflow_job.json: the portable pipeline's
  transforms with their environments and resource hints, and the job's worker environment."""
  import apache_beam as beam
  from apache_beam.portability.api import beam_runner_api_pb2
  from apache_beam.runners.dataflow.internal import apiclient
  from apache_beam.utils import proto_utils

  from beam_pipeline import launch
  from beam_pipeline import pipeline as graph
  from beam_pipeline.options import SafetyPretrainingOptions

  options = launch.prepare(["--runner=DataflowRunner", "--dry_run=True", *args])
  pipeline = beam.Pipeline(options=options)
  graph.build(pipeline, options.view_as(SafetyPretrainingOptions))
  job = pipeline.run().job
  components = job.proto_pipeline.components
  environment = apiclient.Environment(
      packages=[], options=job.options,
      environment_version=apiclient._FNAPI_ENVIRONMENT_MAJOR_VERSION,  # pylint: disable=protected-access
      proto_pipeline_staged_url=f"{job.google_cloud_options.staging_location}/pipeline.pb",
      proto_pipeline=job.proto_pipeline).proto
  os.makedirs(output, exist_ok=True)
  described = {
      "job_name": job.proto.name,
      "job_type": type(job.proto).to_dict(job.proto)["type_"],
      "root_transforms": [
          components.transforms[t].unique_name for t in job.proto_pipeline.root_transform_ids],
      "transforms": {
          t.unique_name: t.environment_id for t in components.transforms.values()},
      "environments": {
          env_id: {
              "image": proto_utils.parse_Bytes(
                  env.payload, beam_runner_api_pb2.DockerPayload).container_image,
              "resource_hints": {
                  urn: value.decode("utf-8", "replace")
                  for urn, value in env.resource_hints.items()},
          } for env_id, env in components.environments.items()},
      "worker_environment": type(environment).to_dict(environment),
  }
  with open(os.path.join(output, "dataflow_job.json"), "w", encoding="utf-8") as f:
    json.dump(described, f, indent=2, sort_keys=True, default=str)


ENGINES = {
    "direct": run_direct, "direct-switch": run_direct_switch,
    "direct-switch-plain-beam": functools.partial(run_direct_switch, as_launched=False),
    "flink": run_flink,
    "prism": run_prism,
    "prism-build-only": functools.partial(run_prism, program=BUILD_ONLY),
    "flink-build-only": functools.partial(run_flink, program=BUILD_ONLY),
    "dataflow": translate_for_dataflow,
}


def _exit_on_sigterm(signum, frame) -> None:  # pylint: disable=unused-argument
  raise SystemExit(128 + signum)  # unwinds, so every started service is stopped


def main(argv: typing.Sequence[str]) -> None:
  signal.signal(signal.SIGTERM, _exit_on_sigterm)
  sys.path.insert(0, REPO)  # the dataflow translation builds the graph in this process
  engine, output, *args = argv
  log_dir = output + ".logs"
  shutil.rmtree(log_dir, ignore_errors=True)
  os.makedirs(log_dir)
  started = time.monotonic()
  ENGINES[engine](output, args, log_dir)
  print(f"{engine}: {time.monotonic() - started:.1f}s, logs in {log_dir}")


if __name__ == "__main__":
  main(sys.argv[1:])

// cnidriver drives CNI plugins through libcni, the library container runtimes
// use, so tests exercise a plugin exactly as a runtime would.
//
//	cnidriver [flags] add|check|del|validate|version CONFIG
//	cnidriver [flags] -netns P1,P2,.. add-parallel|check-parallel|del-parallel CONFIG
//
// CONFIG is a .conflist (run with the *NetworkList calls) or a .conf (run with
// the single-network calls, as runtimes do for cniVersion < 0.3.0). Output, on
// stdout, is one JSON object:
//
//	{"result": <result as libcni parsed it>, "raw": [<each plugin's stdout>]}
//
// and on failure {"error": MESSAGE, "code": CNI_ERROR_CODE_OR_0} with exit 1.
// libcni caches results under -cache (never the host's /var/lib/cni).
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/invoke"
	"github.com/containernetworking/cni/pkg/types"
	"github.com/containernetworking/cni/pkg/version"
)

// recordingExec is libcni's default plugin executor that also keeps every
// plugin's raw stdout, so tests can compare the exact shape plugins print.
// Safe for the concurrent calls of the *-parallel commands.
type recordingExec struct {
	invoke.RawExec
	version.PluginDecoder
	mu  sync.Mutex
	raw []json.RawMessage
}

func (e *recordingExec) ExecPlugin(ctx context.Context, path string, stdin []byte, environ []string) ([]byte, error) {
	out, err := e.RawExec.ExecPlugin(ctx, path, stdin, environ)
	if err == nil && json.Valid(out) {
		e.mu.Lock()
		e.raw = append(e.raw, json.RawMessage(out))
		e.mu.Unlock()
	}
	return out, err
}

type options struct {
	netns, id, ifname, path, cache, args string
}

func main() {
	var o options
	flag.StringVar(&o.netns, "netns", "", "network namespace path (CNI_NETNS)")
	flag.StringVar(&o.id, "id", "", "container ID (CNI_CONTAINERID)")
	flag.StringVar(&o.ifname, "ifname", "eth0", "interface name (CNI_IFNAME)")
	flag.StringVar(&o.path, "path", "", "plugin directories, ':'-separated (CNI_PATH)")
	flag.StringVar(&o.cache, "cache", "", "libcni result cache directory (required; private to the caller)")
	flag.StringVar(&o.args, "args", "", "CNI_ARGS, K=V;K=V")
	flag.Parse()
	if flag.NArg() != 2 || o.cache == "" || o.path == "" {
		fmt.Fprintln(os.Stderr, "usage: cnidriver -path DIRS -cache DIR [-netns P -id ID -ifname IF -args K=V;..] add|check|del|validate|version CONFIG")
		os.Exit(2)
	}
	exec := &recordingExec{RawExec: invoke.RawExec{Stderr: os.Stderr}}
	cni := libcni.NewCNIConfigWithCacheDir(filepath.SplitList(o.path), o.cache, exec)
	if strings.HasSuffix(flag.Arg(0), "-parallel") {
		emit(parallel(cni, &o, strings.TrimSuffix(flag.Arg(0), "-parallel"), flag.Arg(1)))
		return
	}
	var before, after syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_CHILDREN, &before)
	start := time.Now()
	result, err := run(cni, &o, flag.Arg(0), flag.Arg(1))
	elapsed := time.Since(start).Seconds()
	_ = syscall.Getrusage(syscall.RUSAGE_CHILDREN, &after)
	if err != nil {
		fail(err)
	}
	raw := exec.raw
	if raw == nil {
		raw = []json.RawMessage{}
	}
	// seconds: the libcni call alone (plugin executions included); cpu_seconds:
	// the CPU (user + system) of the plugin processes it ran and waited for; for benchmarks
	emit(map[string]interface{}{"result": result, "raw": raw, "seconds": elapsed, "cpu_seconds": cpuSeconds(&after) - cpuSeconds(&before)})
}

// cpuSeconds: user + system time of a Rusage, in seconds.
func cpuSeconds(r *syscall.Rusage) float64 {
	return float64(r.Utime.Sec+r.Stime.Sec) + float64(r.Utime.Usec+r.Stime.Usec)/1e6
}

// parallel runs COMMAND (add, check, del) at once for every namespace in -netns
// (comma-separated), container IDs "<-id>-<index>", and reports the wall time of
// the whole batch and how many calls failed (benchmarks: N ADDs in parallel).
func parallel(cni *libcni.CNIConfig, o *options, command, config string) map[string]interface{} {
	paths := strings.Split(o.netns, ",")
	errs := make([]string, len(paths))
	var wg sync.WaitGroup
	start := time.Now()
	for i, path := range paths {
		wg.Add(1)
		go func(i int, path string) {
			defer wg.Done()
			one := *o
			one.netns, one.id = path, fmt.Sprintf("%s-%d", o.id, i)
			if _, err := run(cni, &one, command, config); err != nil {
				errs[i] = err.Error()
			}
		}(i, path)
	}
	wg.Wait()
	failed := []string{}
	for _, e := range errs {
		if e != "" {
			failed = append(failed, e)
		}
	}
	return map[string]interface{}{"seconds": time.Since(start).Seconds(), "calls": len(paths), "errors": failed}
}

// run loads CONFIG and performs one command on it.
func run(cni *libcni.CNIConfig, o *options, command, config string) (interface{}, error) {
	rt := &libcni.RuntimeConf{ContainerID: o.id, NetNS: o.netns, IfName: o.ifname, Args: parseArgs(o.args)}
	ctx := context.Background()
	if strings.HasSuffix(config, ".conf") {
		conf, err := libcni.ConfFromFile(config)
		if err != nil {
			return nil, err
		}
		return runSingle(ctx, cni, conf, rt, command)
	}
	list, err := libcni.ConfListFromFile(config)
	if err != nil {
		return nil, err
	}
	return runList(ctx, cni, list, rt, command)
}

func runList(ctx context.Context, cni *libcni.CNIConfig, list *libcni.NetworkConfigList, rt *libcni.RuntimeConf, command string) (interface{}, error) {
	switch command {
	case "add":
		return cni.AddNetworkList(ctx, list, rt)
	case "check":
		return nil, cni.CheckNetworkList(ctx, list, rt)
	case "del":
		return nil, cni.DelNetworkList(ctx, list, rt)
	case "validate":
		return cni.ValidateNetworkList(ctx, list)
	case "version":
		return cni.GetVersionInfo(ctx, list.Plugins[0].Network.Type)
	}
	return nil, fmt.Errorf("unknown command %q", command)
}

func runSingle(ctx context.Context, cni *libcni.CNIConfig, conf *libcni.NetworkConfig, rt *libcni.RuntimeConf, command string) (interface{}, error) {
	switch command {
	case "add":
		return cni.AddNetwork(ctx, conf, rt)
	case "check":
		return nil, cni.CheckNetwork(ctx, conf, rt)
	case "del":
		return nil, cni.DelNetwork(ctx, conf, rt)
	case "validate":
		return cni.ValidateNetwork(ctx, conf)
	case "version":
		return cni.GetVersionInfo(ctx, conf.Network.Type)
	}
	return nil, fmt.Errorf("unknown command %q", command)
}

// parseArgs turns "K=V;K=V" into libcni's CNI_ARGS pairs.
func parseArgs(s string) [][2]string {
	var out [][2]string
	for _, kv := range strings.Split(s, ";") {
		if k, v, ok := strings.Cut(kv, "="); ok {
			out = append(out, [2]string{k, v})
		}
	}
	return out
}

// fail prints the error as JSON, with the plugin's CNI error code when the
// failure came from a plugin's error object, and exits 1.
func fail(err error) {
	code := uint(0)
	var cniErr *types.Error
	if errors.As(err, &cniErr) {
		code = cniErr.Code
	}
	emit(map[string]interface{}{"error": err.Error(), "code": code})
	os.Exit(1)
}

func emit(v interface{}) {
	enc := json.NewEncoder(os.Stdout)
	enc.SetIndent("", "  ")
	if err := enc.Encode(v); err != nil {
		fmt.Fprintln(os.Stderr, "cnidriver: cannot print result:", err)
		os.Exit(1)
	}
}

package devflow

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/user"
	"regexp"
	"strconv"
	"strings"
	"time"

	"sigs.k8s.io/yaml"

	"github.com/bridgetun/bridgetun/session"
)

// ProjectConfigFile is read from the working directory, like the seed's
// KubernetesLocalProcessConfig.yaml: it sets a project's intercept defaults.
const ProjectConfigFile = "bridgetun.yaml"

// ProjectConfig is bridgetun.yaml. Every field is optional; flags win.
//
//	version: 1
//	intercept:            # defaults for `bridgetun intercept`
//	  service: api
//	  port: "8080:http"   # LOCAL[:REMOTE]
//	  isolate: true
//	  routeAs: alice
//	  envFile: .env
//	  mount: ./.bridgetun/volumes
//	  wait: 2m            # how long `-- CMD` has to listen
//	  grace: 30m          # how long the patch outlives a silent workstation
//	env:                  # added to (or overriding) the pod's environment
//	  - {name: LOG_LEVEL, value: debug}
//	volumes:              # extra directories copied out of the pod (needs tar in the container)
//	  - {path: /var/lib/data, local: ./data}
type ProjectConfig struct {
	Version   int              `json:"version"`
	Intercept ProjectIntercept `json:"intercept"`
	Env       []EnvVar         `json:"env"`
	Volumes   []VolumeCopy     `json:"volumes"`
}

// ProjectIntercept is bridgetun.yaml's intercept: the defaults for the
// flags of the same names.
type ProjectIntercept struct {
	Service   string   `json:"service"`
	Port      string   `json:"port"`
	Isolate   bool     `json:"isolate"`
	RouteAs   string   `json:"routeAs"`
	EnvFile   string   `json:"envFile"`
	EnvFormat string   `json:"envFormat"` // dotenv (default) or docker
	Mount     string   `json:"mount"`
	Wait      Duration `json:"wait"`
	Grace     Duration `json:"grace"`
}

// Duration is a time.Duration written as Go writes one: "90s", "15m".
type Duration time.Duration

// UnmarshalJSON reads "15m" (or a number of seconds).
func (d *Duration) UnmarshalJSON(b []byte) error {
	var v any
	if err := json.Unmarshal(b, &v); err != nil {
		return err
	}
	switch v := v.(type) {
	case string:
		p, err := time.ParseDuration(v)
		if err != nil {
			return fmt.Errorf("duration %q: want e.g. 90s or 15m", v)
		}
		*d = Duration(p)
	case float64:
		*d = Duration(time.Duration(v * float64(time.Second)))
	default:
		return fmt.Errorf("duration %s: want e.g. 90s or 15m", b)
	}
	return nil
}

// EnvVar is one variable added to the container's environment.
type EnvVar struct {
	Name  string `json:"name"`
	Value string `json:"value"`
}

// VolumeCopy is a directory copied once out of the pod.
type VolumeCopy struct {
	Path  string `json:"path"`  // absolute path in the container
	Local string `json:"local"` // "" = under the mount directory, at the same path
}

// LoadProjectConfig reads path; a missing file is an empty config.
func LoadProjectConfig(path string) (ProjectConfig, error) {
	var pc ProjectConfig
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return pc, nil
	}
	if err != nil {
		return pc, fmt.Errorf("read %s: %w", path, err)
	}
	if err := yaml.UnmarshalStrict(b, &pc); err != nil {
		return pc, fmt.Errorf("%s: %w (see `bridgetun intercept --help` for the format)", path, err)
	}
	if pc.Version != 0 && pc.Version != 1 {
		return pc, fmt.Errorf("%s: version %d: this bridgetun reads version 1", path, pc.Version)
	}
	for i, e := range pc.Env {
		if e.Name == "" {
			return pc, fmt.Errorf("%s: env[%d]: name is empty", path, i)
		}
	}
	for i, v := range pc.Volumes {
		if !strings.HasPrefix(v.Path, "/") {
			return pc, fmt.Errorf("%s: volumes[%d].path %q: want an absolute path in the container", path, i, v.Path)
		}
	}
	return pc, nil
}

// InterceptFlags is the command line of `bridgetun intercept`. A nil
// pointer is a flag not given, which bridgetun.yaml may fill; a flag given
// with its zero value (--isolate=false, --env-file "") still beats the file.
type InterceptFlags struct {
	Service   string         // the SERVICE argument; "" = not given
	Port      *string        // --port LOCAL[:REMOTE]
	Isolate   *bool          // --isolate
	RouteAs   *string        // --route-as
	Force     bool           // --force
	EnvFile   *string        // --env-file
	EnvFormat *string        // --env-format
	Mount     *string        // --mount
	Wait      *time.Duration // --wait
	Grace     *time.Duration // --grace
	Container string         // --container; "" = the one serving the port
	URLAddr   string         // --url-addr; "" = 127.0.0.1, a free port
	NoMount   bool           // --no-mount
}

// MergeIntercept merges the command line over the project file and checks
// the result: flags win, the file fills what they leave out, a route-as
// value implies isolation, and isolation without a value derives one from
// the user and host (DefaultRouteAs). It fills the config's Spec (Holder
// left empty) and Replicate; the caller adds the rest.
func MergeIntercept(pc ProjectConfig, f InterceptFlags) (InterceptConfig, error) {
	fi := pc.Intercept
	service := f.Service
	if service == "" {
		service = fi.Service
	}
	if service == "" {
		return InterceptConfig{}, errors.New("intercept: name the Service to intercept (or set intercept.service in bridgetun.yaml)")
	}
	port := orFile(f.Port, fi.Port)
	isolate := orFile(f.Isolate, false)
	if f.Isolate == nil && f.RouteAs == nil {
		isolate = fi.Isolate
	}
	routeAs := orFile(f.RouteAs, fi.RouteAs)
	if port == "" {
		return InterceptConfig{}, errors.New("intercept: --port LOCAL[:REMOTE] is required (LOCAL: where your server listens here)")
	}
	local, remote, err := parsePort(port)
	if err != nil {
		return InterceptConfig{}, err
	}
	if routeAs != "" {
		isolate = true
	}
	if isolate && routeAs == "" {
		routeAs = DefaultRouteAs()
	}
	if routeAs != "" && !routeAsRE.MatchString(routeAs) {
		return InterceptConfig{}, fmt.Errorf("--route-as %q: use letters, digits, '.', '_' and '-' (it travels in an HTTP header)", routeAs)
	}
	wait := orFile(f.Wait, time.Duration(fi.Wait))
	if wait < 0 {
		return InterceptConfig{}, fmt.Errorf("--wait %s: want a positive duration such as 60s", wait)
	}
	grace := orFile(f.Grace, time.Duration(fi.Grace))
	if grace < 0 || (grace > 0 && grace < time.Second) || grace > MaxGrace {
		return InterceptConfig{}, fmt.Errorf("--grace %s: want 1s to %s, e.g. 15m (how long the workload stays patched while this machine is away)", grace, MaxGrace)
	}
	envFormat := orFile(f.EnvFormat, fi.EnvFormat) // "" = dotenv
	if envFormat != "" && envFormat != EnvFormatDotenv && envFormat != EnvFormatDocker {
		return InterceptConfig{}, fmt.Errorf("--env-format %q: want %s (for a shell's `set -a; . FILE`, godotenv) or %s (for `docker run --env-file`)", envFormat, EnvFormatDotenv, EnvFormatDocker)
	}
	return InterceptConfig{
		Spec: session.InterceptSpec{Service: service, Port: remote, LocalPort: local, RouteAs: routeAs, URLAddr: f.URLAddr, Grace: grace, Force: f.Force},
		Wait: wait,
		Replicate: Replication{
			Container: f.Container,
			EnvFile:   orFile(f.EnvFile, fi.EnvFile),
			EnvFormat: envFormat,
			Mount:     orFile(f.Mount, fi.Mount),
			NoMount:   f.NoMount,
			Env:       pc.Env,
			Volumes:   pc.Volumes,
		},
	}, nil
}

// MaxGrace is the longest grace period the gateway applies.
const MaxGrace = 24 * time.Hour

// orFile is the flag's value if it was given, else the file's.
func orFile[T any](flag *T, file T) T {
	if flag != nil {
		return *flag
	}
	return file
}

// parsePort parses LOCAL[:REMOTE].
func parsePort(s string) (local int, remote string, err error) {
	l, remote, _ := strings.Cut(s, ":")
	local, err = strconv.Atoi(l)
	if err != nil || local < 1 || local > 65535 {
		return 0, "", fmt.Errorf("--port %q: want LOCAL[:REMOTE], LOCAL a port number such as 8080", s)
	}
	return local, remote, nil
}

var (
	routeAsRE  = regexp.MustCompile(`^[A-Za-z0-9._-]{1,63}$`)
	notLabelRE = regexp.MustCompile(`[^A-Za-z0-9-]+`)
)

// DefaultRouteAs is the user name plus a short hash of the host, so two
// machines of one user do not collide.
func DefaultRouteAs() string {
	name := "user"
	if u, err := user.Current(); err == nil && u.Username != "" {
		name = u.Username
	}
	name = strings.ToLower(notLabelRE.ReplaceAllString(name, "-"))
	host, _ := os.Hostname()
	h := sha256.Sum256([]byte(host))
	return strings.Trim(name, "-") + "-" + hex.EncodeToString(h[:2])
}

// holder is who holds an intercept, as others trying the same Service see it.
func holder() string {
	name := "someone"
	if u, err := user.Current(); err == nil {
		name = u.Username
	}
	host, _ := os.Hostname()
	return name + "@" + host
}

// dotenv renders variables as a dotenv file, in the given order (later
// duplicates win), each as KEY="value" with \, ", $ and ` escaped by a
// backslash and newlines written as they are. A POSIX shell (set -a; . ./.env)
// reads every value back exactly and never expands or runs anything in it.
// godotenv v1.5 reads back every value except one ending in a backslash (it
// takes the closing quote for an escaped one) and turns CR LF into LF.
// No single format serves every reader: the single-quoted shell form breaks
// godotenv on any value holding a single quote, python-dotenv keeps the
// backslash of \$ and \`, and docker run --env-file takes quotes as part of
// the value; this form is exact for the shell first. A name that is not a
// shell variable name (Kubernetes allows any printable name) is not written,
// as it could run as a command when sourced; a comment says it was left out.
func dotenv(vars []EnvVar) []byte {
	var b bytes.Buffer
	r := strings.NewReplacer(`\`, `\\`, `"`, `\"`, "$", `\$`, "`", "\\`")
	for _, v := range vars {
		if !shellNameRE.MatchString(v.Name) {
			fmt.Fprintf(&b, "# %s left out: not a shell variable name\n", strconv.QuoteToASCII(v.Name))
			continue
		}
		fmt.Fprintf(&b, "%s=\"%s\"\n", v.Name, r.Replace(v.Value))
	}
	return b.Bytes()
}

// shellNameRE matches the names a POSIX shell takes for variables.
var shellNameRE = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)

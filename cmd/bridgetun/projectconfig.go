package main

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strings"

	"sigs.k8s.io/yaml"
)

// projectConfigFile is read from the working directory, like the seed's
// KubernetesLocalProcessConfig.yaml: it sets a project's intercept defaults.
const projectConfigFile = "bridgetun.yaml"

// projectConfig is bridgetun.yaml. Every field is optional; flags win.
//
//	version: 1
//	intercept:            # defaults for `bridgetun intercept`
//	  service: api
//	  port: "8080:http"   # LOCAL[:REMOTE]
//	  isolate: true
//	  routeAs: alice
//	  envFile: .env
//	  mount: ./.bridgetun/volumes
//	env:                  # added to (or overriding) the pod's environment
//	  - {name: LOG_LEVEL, value: debug}
//	volumes:              # extra directories copied out of the pod (needs tar in the container)
//	  - {path: /var/lib/data, local: ./data}
type projectConfig struct {
	Version   int `json:"version"`
	Intercept struct {
		Service string `json:"service"`
		Port    string `json:"port"`
		Isolate bool   `json:"isolate"`
		RouteAs string `json:"routeAs"`
		EnvFile string `json:"envFile"`
		Mount   string `json:"mount"`
	} `json:"intercept"`
	Env []struct {
		Name  string `json:"name"`
		Value string `json:"value"`
	} `json:"env"`
	Volumes []struct {
		Path  string `json:"path"`  // absolute path in the container
		Local string `json:"local"` // "" = under the mount directory, at the same path
	} `json:"volumes"`
}

// loadProjectConfig reads path; a missing file is an empty config.
func loadProjectConfig(path string) (projectConfig, error) {
	var pc projectConfig
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

// dotenv renders variables as a dotenv file: KEY="value" with \, ", $ and
// newlines escaped, in the given order (later duplicates win when sourced).
func dotenv(vars [][2]string) []byte {
	var b bytes.Buffer
	r := strings.NewReplacer(`\`, `\\`, `"`, `\"`, "$", `\$`, "\n", `\n`, "\r", `\r`)
	for _, kv := range vars {
		fmt.Fprintf(&b, "%s=\"%s\"\n", kv[0], r.Replace(kv[1]))
	}
	return b.Bytes()
}

package main

import (
	"fmt"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"
)

// krewPlugin is the part of krew's Plugin (index.krew.googlecontainertools
// .github.com/v1alpha2) the manifest uses; parsed strictly, so a
// misspelt or misplaced field fails.
type krewPlugin struct {
	APIVersion string `json:"apiVersion"`
	Kind       string `json:"kind"`
	Metadata   struct {
		Name string `json:"name"`
	} `json:"metadata"`
	Spec struct {
		Version          string `json:"version"`
		Homepage         string `json:"homepage"`
		ShortDescription string `json:"shortDescription"`
		Description      string `json:"description"`
		Caveats          string `json:"caveats"`
		Platforms        []struct {
			Selector struct {
				MatchLabels map[string]string `json:"matchLabels"`
			} `json:"selector"`
			URI    string `json:"uri"`
			Sha256 string `json:"sha256"`
			Files  []struct {
				From string `json:"from"`
				To   string `json:"to"`
			} `json:"files"`
			Bin string `json:"bin"`
		} `json:"platforms"`
	} `json:"spec"`
}

const krewManifest = "../../deploy/krew/bridgetun.yaml"

// TestKrewManifest renders deploy/krew/bridgetun.yaml as a release would
// (VERSION and one SHA256_OS_ARCH per archive) and checks it is a krew
// Plugin for linux, darwin and windows on amd64 and arm64 whose binary is
// kubectl-bridgetun, the name the program recognises as the plugin.
func TestKrewManifest(t *testing.T) {
	raw, err := os.ReadFile(krewManifest)
	if err != nil {
		t.Fatal(err)
	}
	shas := map[string]string{}
	rendered := os.Expand(string(raw), func(name string) string {
		switch {
		case name == "VERSION":
			return "v1.2.3"
		case strings.HasPrefix(name, "SHA256_"):
			shas[name] = fmt.Sprintf("%064x", len(shas)+1)
			return shas[name]
		}
		t.Errorf("unknown placeholder ${%s}", name)
		return ""
	})
	var p krewPlugin
	if err := yaml.UnmarshalStrict([]byte(rendered), &p); err != nil {
		t.Fatalf("%s: %v", krewManifest, err)
	}
	if p.APIVersion != "krew.googlecontainertools.github.com/v1alpha2" || p.Kind != "Plugin" {
		t.Errorf("got %s %s, want a krew v1alpha2 Plugin", p.APIVersion, p.Kind)
	}
	if "kubectl-"+p.Metadata.Name != pluginFile {
		t.Errorf("plugin name %q: kubectl would run kubectl-%s, the program answers as the plugin only to %s", p.Metadata.Name, p.Metadata.Name, pluginFile)
	}
	if p.Spec.Version != "v1.2.3" || p.Spec.ShortDescription == "" || p.Spec.Homepage == "" {
		t.Errorf("spec: version %q, shortDescription %q, homepage %q", p.Spec.Version, p.Spec.ShortDescription, p.Spec.Homepage)
	}
	var got []string
	seenSHA := map[string]bool{}
	for _, pl := range p.Spec.Platforms {
		os, arch := pl.Selector.MatchLabels["os"], pl.Selector.MatchLabels["arch"]
		got = append(got, os+"/"+arch)
		wantBin := pluginFile
		if os == "windows" {
			wantBin += ".exe" // krew runs the file named by bin; Windows needs the suffix
		}
		if pl.Bin != wantBin || executableBase(pl.Bin) != pluginFile {
			t.Errorf("%s/%s: bin %q, want %q", os, arch, pl.Bin, wantBin)
		}
		if !slices.ContainsFunc(pl.Files, func(f struct {
			From string `json:"from"`
			To   string `json:"to"`
		}) bool {
			return f.From == pl.Bin
		}) {
			t.Errorf("%s/%s: files %v do not install bin %q", os, arch, pl.Files, pl.Bin)
		}
		if !strings.HasPrefix(pl.URI, "https://") || !strings.Contains(pl.URI, "/v1.2.3/") || !strings.Contains(pl.URI, "_"+os+"_"+arch+".") {
			t.Errorf("%s/%s: uri %q does not name this version and platform", os, arch, pl.URI)
		}
		if want := shas["SHA256_"+strings.ToUpper(os)+"_"+strings.ToUpper(arch)]; pl.Sha256 != want || !regexp.MustCompile(`^[0-9a-f]{64}$`).MatchString(pl.Sha256) {
			t.Errorf("%s/%s: sha256 %q, want its own placeholder SHA256_%s_%s", os, arch, pl.Sha256, strings.ToUpper(os), strings.ToUpper(arch))
		}
		if seenSHA[pl.Sha256] {
			t.Errorf("%s/%s: sha256 placeholder shared with another platform", os, arch)
		}
		seenSHA[pl.Sha256] = true
	}
	want := []string{"darwin/amd64", "darwin/arm64", "linux/amd64", "linux/arm64", "windows/amd64", "windows/arm64"}
	slices.Sort(got)
	if !slices.Equal(got, want) {
		t.Errorf("platforms: got %v, want %v", got, want)
	}
}

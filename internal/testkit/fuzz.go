package testkit

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"testing"
)

// WriteCorpusEnv, set to 1, makes Seeds also write each seed into the
// package's committed corpus (testdata/fuzz/FuzzXxx/), so the corpus and
// the seeds in the code stay one list: `BRIDGETUN_WRITE_CORPUS=1 go test
// -run '^FuzzXxx$' ./pkg` refreshes it.
const WriteCorpusEnv = "BRIDGETUN_WRITE_CORPUS"

// Seeds adds each seed (one []byte fuzz argument) to f, and with
// WriteCorpusEnv=1 writes it as testdata/fuzz/<f.Name()>/<hash> in the
// `go test fuzz v1` format.
func Seeds(f *testing.F, seeds ...[]byte) {
	f.Helper()
	write := os.Getenv(WriteCorpusEnv) == "1"
	dir := filepath.Join("testdata", "fuzz", f.Name())
	if write {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			f.Fatalf("corpus: %v", err)
		}
	}
	for _, s := range seeds {
		f.Add(s)
		if !write {
			continue
		}
		sum := sha256.Sum256(s)
		body := fmt.Sprintf("go test fuzz v1\n[]byte(%q)\n", s)
		if err := os.WriteFile(filepath.Join(dir, "seed-"+hex.EncodeToString(sum[:8])), []byte(body), 0o644); err != nil {
			f.Fatalf("corpus: %v", err)
		}
	}
}

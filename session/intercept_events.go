package session

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"

	"github.com/bridgetun/bridgetun/cluster"
)

// InterceptEvent is one step of an intercept that the session reports
// while it works, for the `intercept` process to print.
type InterceptEvent struct {
	// Done: a step finished ("patched deployment/api"); else the session
	// is waiting, and Text says for what ("1 of 2 replicas ready").
	Done bool   `json:"done,omitempty"`
	Text string `json:"text"`
}

// interceptLine is one line of POST /intercept's answer, newline-delimited
// JSON: any number of events, then one line with the result or the error.
type interceptLine struct {
	Event *InterceptEvent `json:"event,omitempty"`
	Info  *InterceptInfo  `json:"info,omitempty"`
	Error string          `json:"error,omitempty"`
}

// ndjsonType is the content type of a streamed intercept answer.
const ndjsonType = "application/x-ndjson"

// interceptStream writes POST /intercept's answer: each line is flushed at
// once so the client prints the steps as they happen. It is used from the
// handler's goroutine only.
type interceptStream struct {
	w   http.ResponseWriter
	enc *json.Encoder
}

func newInterceptStream(w http.ResponseWriter) *interceptStream {
	w.Header().Set("Content-Type", ndjsonType)
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(http.StatusOK)
	return &interceptStream{w: w, enc: json.NewEncoder(w)}
}

func (s *interceptStream) send(l interceptLine) {
	_ = s.enc.Encode(l) // a client gone shows as its request's ctx ending
	if f, ok := s.w.(http.Flusher); ok {
		f.Flush()
	}
}

// readInterceptStream reads POST /intercept's answer, handing each event to
// progress (nil = none), and returns the result or the session's one-line
// error. An answer that ends without either is an error naming that.
func readInterceptStream(body io.Reader, progress func(InterceptEvent)) (InterceptInfo, error) {
	sc := bufio.NewScanner(body)
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		var l interceptLine
		if err := json.Unmarshal(sc.Bytes(), &l); err != nil {
			return InterceptInfo{}, fmt.Errorf("intercept: bad answer from the session: %w", err)
		}
		switch {
		case l.Error != "":
			return InterceptInfo{}, errors.New(strings.TrimSpace(l.Error))
		case l.Info != nil:
			return *l.Info, nil
		case l.Event != nil && progress != nil:
			progress(*l.Event)
		}
	}
	if err := sc.Err(); err != nil {
		return InterceptInfo{}, fmt.Errorf("intercept: the session's answer broke off: %w", err)
	}
	return InterceptInfo{}, errors.New("intercept: the session's answer ended without a result (did the session stop? see `bridgetun status`)")
}

// shortRef is "deployment/api": the namespace goes without saying on the
// intercept's own terminal.
func shortRef(r cluster.WorkloadRef) string { return strings.ToLower(r.Kind) + "/" + r.Name }

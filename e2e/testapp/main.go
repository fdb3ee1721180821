// Command testapp is the e2e suite's test and sample application (image bridgetun.local/testapp:dev).
//
//	testapp http      [-listen :8080]     HTTP/1.1 + h2c echo: JSON with service, instance, protocol, headers, config file, secret env
//	                                      flags and the response of $DOWNSTREAM_URL (kubernetes-route-as propagated)
//	testapp udp-echo  [-listen :5353]     UDP echo server
//	testapp get       [-h2c] [-H K:V]... URL  HTTP GET (h2c: HTTP/2 prior knowledge), body to stdout, non-2xx exits 1
//	testapp dial      [-timeout D] ADDR   TCP connect, exit 0 if it connects
//	testapp udp       [-timeout D] ADDR MSG  send MSG, print the reply
//	testapp lookup    [-server IP:53 [-socks HOST:PORT]] NAME   resolve NAME (optionally with a given DNS
//	                                      server, optionally over a SOCKS5 proxy's UDP ASSOCIATE)
//	testapp sink      [-listen :9000]     bulk TCP: read everything, reply with the byte count
//	testapp source    ADDR BYTES          bulk TCP: send BYTES, print bytes, seconds and MB/s
//	testapp pause                          pod sandbox: sleep until SIGTERM, reap zombies
package main

import (
	"fmt"
	"os"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: testapp http|udp-echo|get|dial|udp|lookup|sink|source|pause [flags]")
		os.Exit(2)
	}
	cmds := map[string]func([]string) error{
		"http": runHTTP, "udp-echo": runUDPEcho, "get": runGet, "dial": runDial, "udp": runUDP,
		"lookup": runLookup, "sink": runSink, "source": runSource, "pause": runPause,
	}
	f, ok := cmds[os.Args[1]]
	if !ok {
		fmt.Fprintf(os.Stderr, "testapp: unknown command %q\n", os.Args[1])
		os.Exit(2)
	}
	if err := f(os.Args[2:]); err != nil {
		fmt.Fprintf(os.Stderr, "testapp %s: %v\n", os.Args[1], err)
		os.Exit(1)
	}
}

// Command mkimage assembles an e2e image from a spec file (see package imagebuild) into a docker-archive
// tarball for `ctr -n k8s.io images import`. $VARS in file sources come from the environment.
//
//	mkimage -spec e2e/images/agent.files -o /var/tmp/bridgetun-e2e/images/agent.tar
package main

import (
	"flag"
	"fmt"
	"os"

	"github.com/bridgetun/bridgetun/e2e/imagebuild"
)

func main() {
	specPath := flag.String("spec", "", "image spec file (e2e/images/*.files)")
	out := flag.String("o", "", "output tarball")
	printTag := flag.Bool("print-tag", false, "print the spec's tag and exit")
	flag.Parse()
	if *specPath == "" || (*out == "" && !*printTag) {
		fmt.Fprintln(os.Stderr, "usage: mkimage -spec FILE -o OUT.tar | -spec FILE -print-tag")
		os.Exit(2)
	}
	spec, err := imagebuild.ParseFile(*specPath)
	if err != nil {
		fmt.Fprintln(os.Stderr, "mkimage:", err)
		os.Exit(1)
	}
	if *printTag {
		fmt.Println(spec.Tag)
		return
	}
	if err := imagebuild.Build(spec, *out, nil); err != nil {
		fmt.Fprintf(os.Stderr, "mkimage %s: %v\n", *specPath, err)
		os.Exit(1)
	}
	fmt.Printf("%s -> %s\n", spec.Tag, *out)
}

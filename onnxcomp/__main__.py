from onnxcomp.cli import main

main()

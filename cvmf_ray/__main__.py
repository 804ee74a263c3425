from cvmf_ray.cli import main

main()

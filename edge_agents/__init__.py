"""edge_agents"""
